"""Replay a function's GPU work from a CUDA graph instead of launching every kernel again.

A Stable Diffusion UNet step launches about a thousand small kernels; on a fast GPU the launches,
not the arithmetic, set the pace. :class:`GraphedCall` records the kernels of one call once per
input signature (shapes, dtypes and every non-tensor argument) and afterwards only copies the new
inputs into the recorded buffers and replays the graph. It works around eager code and around
``torch.compile`` output alike.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from inferkit._arguments import signature
from inferkit.errors import first_line

__all__ = ["GraphedCall", "forget_graphs"]

_MAX_GRAPHS = 8


def _rebuild(value: Any, tensors: list[torch.Tensor], position: list[int]) -> Any:
    """Rebuild ``value``'s structure with ``tensors`` substituted in order."""
    if isinstance(value, torch.Tensor):
        out = tensors[position[0]]
        position[0] += 1
        return out
    if isinstance(value, (tuple, list)):
        return type(value)(_rebuild(v, tensors, position) for v in value)
    if isinstance(value, dict):
        return {k: _rebuild(v, tensors, position) for k, v in value.items()}
    return value


def _clone_out(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone_out(v) for v in value)
    if isinstance(value, dict):
        # Keeps dict subclasses such as transformers' ModelOutput (attribute access included).
        out = copy.copy(value)
        for k, v in value.items():
            out[k] = _clone_out(v)
        return out
    return value


class _Recorded:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor], output: Any):
        self.graph = graph
        self.inputs = inputs
        self.output = output


class GraphedCall:
    """Call ``fn`` through CUDA graphs, one recorded per input signature.

    The first call with a new signature runs ``fn`` ``warmup`` times on a side stream (so lazy
    initialisation and compilation happen outside the recording), then records one call. Later
    calls copy their tensors into the recorded inputs, replay, and return a copy of the outputs,
    so a result stays valid after the next call. After ``max_graphs`` signatures further new ones
    run ``fn`` directly. ``fn`` must not synchronise with the CPU or change shapes by value.

    Example:
        >>> import torch
        >>> call = GraphedCall(lambda x: x * 2)
        >>> call.recorded
        0

    """

    def __init__(
        self, fn: Callable[..., Any], *, warmup: int = 2, max_graphs: int = _MAX_GRAPHS
    ) -> None:
        """Wrap ``fn``; nothing is recorded until the first call on a CUDA tensor."""
        self.fn = fn
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: dict[Any, _Recorded | None] = {}
        self._pool: Any = None
        self._lock = threading.Lock()

    @property
    def recorded(self) -> int:
        """How many signatures have a recorded graph."""
        return sum(1 for g in self._graphs.values() if g is not None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Replay (or record, then replay) the graph for these arguments."""
        tensors: list[torch.Tensor] = []
        try:
            # Inference mode is part of the signature: buffers made inside it cannot be
            # written outside it.
            key = (signature((args, kwargs), tensors), torch.is_inference_mode_enabled())
        except TypeError:
            return self.fn(*args, **kwargs)  # an argument no graph can key on: run directly
        if not tensors or not all(t.is_cuda for t in tensors) or torch.is_grad_enabled():
            return self.fn(*args, **kwargs)
        with self._lock:
            if key not in self._graphs:
                if len(self._graphs) >= self.max_graphs:
                    return self.fn(*args, **kwargs)
                self._graphs[key] = self._try_record(args, kwargs, tensors)
            recorded = self._graphs[key]
            if recorded is None:
                return self.fn(*args, **kwargs)
            for static, new in zip(recorded.inputs, tensors, strict=True):
                static.copy_(new)
            recorded.graph.replay()
            return _clone_out(recorded.output)

    def _try_record(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], tensors: list[torch.Tensor]
    ) -> _Recorded | None:
        """Record a graph, or return None (after one warning) if ``fn`` cannot be recorded.

        A function that synchronises with the CPU, say, then runs directly for this signature.
        """
        try:
            return self._record(args, kwargs, tensors)
        except torch.OutOfMemoryError:
            torch.cuda.synchronize()
            raise  # not a property of fn: let the memory fallback act, and try again later
        except RuntimeError as e:
            torch.cuda.synchronize()
            name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
            warnings.warn(
                f"inferkit: {name} cannot be recorded as a CUDA graph ({first_line(e)});"
                " it runs without one",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _record(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], tensors: list[torch.Tensor]
    ) -> _Recorded:
        static = [t.clone() for t in tensors]
        s_args, s_kwargs = _rebuild((args, kwargs), static, [0])
        side = torch.cuda.Stream(device=static[0].device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*s_args, **s_kwargs)
        torch.cuda.current_stream(static[0].device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.fn(*s_args, **s_kwargs)
        return _Recorded(graph, static, output)


def forget_graphs(module: Any) -> None:
    """Drop the graphs recorded for ``module``'s methods (after its weights moved or changed dtype).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> m.forward = GraphedCall(m.forward)
        >>> forget_graphs(m)
        >>> m.forward.recorded
        0

    """
    for value in vars(module).values():
        if isinstance(value, GraphedCall):
            with value._lock:
                value._graphs.clear()

"""Compiled networks kept on disk whole, so a new process skips tracing as well as compiling.

``torch.compile`` with a warm cache still traces the network's Python code in every new process
(seconds for a UNet) before it finds the compiled kernels. :class:`PrecompiledCall` uses
torch's ahead-of-time entry point (``torch.compile(...).aot_compile``, experimental in torch)
instead: the first call for each input signature traces and compiles once and saves the result
in the cache folder; a later process with the same torch, libraries, network structure and
input signature loads that file and runs it without tracing.

The saved function reads the module's weights when it runs, so weights changed in place (LoRA
merges) take effect. Its own checks cover the input tensors only; everything else it depends
on is part of the file's name: library versions, device, the module's parameter names, shapes
and dtypes, grad mode, and each non-tensor argument. Where this torch lacks the entry point, or
saving or loading fails, it warns once and compiles in the process as ``torch.compile`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import platform
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from inferkit._arguments import signature
from inferkit.errors import first_line

__all__ = ["PrecompiledCall", "precompile_supported"]

_FORMAT = "1"  # bump when the identity below changes meaning


def precompile_supported() -> bool:
    """Whether this torch can save and load whole compiled functions.

    Example:
        >>> isinstance(precompile_supported(), bool)
        True

    """
    compiler = getattr(torch, "compiler", None)
    loader = getattr(compiler, "load_compiled_function", None)
    guards = getattr(compiler, "keep_tensor_guards_unsafe", None)
    if loader is None or guards is None:
        return False
    try:
        return "external_data" in inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return False


def _wrapped_functions(module: torch.nn.Module) -> dict[str, Any]:
    """Return the functions behind a decorated ``forward``.

    They cannot be pickled, so the file refers to them by name and the loading process
    supplies its own.
    """
    found: dict[str, Any] = {}
    fn: Any = type(module).forward
    for depth in range(8):
        found[f"forward{depth}"] = fn
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            break
    return found


def _module_identity(module: torch.nn.Module, device: torch.device, extra: str) -> str:
    import diffusers

    from inferkit import __version__

    digest = hashlib.sha256()
    capability = ""
    if device.type == "cuda":
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        capability += torch.cuda.get_device_name(device)
    for part in (
        _FORMAT,
        torch.__version__,
        diffusers.__version__,
        __version__,
        platform.python_version(),
        device.type,
        capability,
        f"{type(module).__module__}.{type(module).__qualname__}",
        extra,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        layout = (
            "cl"
            if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
            else "c"
        )
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{layout}\0".encode())
    config = getattr(module, "config", None)
    if isinstance(config, Mapping):
        digest.update(repr(sorted((str(k), repr(v)) for k, v in config.items())).encode())
    for name, child in module.named_modules():
        kind = type(child)
        processor = getattr(child, "processor", None)
        settings = sorted(
            (key, repr(value))
            for key, value in vars(child).items()
            if not key.startswith("_") and isinstance(value, (bool, int, float, str, type(None)))
        )
        line = f"{name}={kind.__module__}.{kind.__qualname__}({child.extra_repr()}){settings}"
        if processor is not None:
            line += f"processor={type(processor).__qualname__}"
        digest.update(f"{line}\0".encode())
    inductor = _inductor_settings()
    digest.update(inductor.encode())
    return digest.hexdigest()[:24]


def _inductor_settings() -> str:
    """Return the compiler's settings that travel between machines (tuning flags among them)."""
    try:
        import torch._inductor.config as inductor_config

        portable = inductor_config.save_config_portable()
    except Exception:  # an older torch: its version is part of the key anyway
        return ""
    return repr(sorted((str(k), repr(v)) for k, v in portable.items()))


def _sources_unchanged(compiled: Any) -> bool:
    """Whether every piece of Python the saved code was traced from reads as it did then."""
    import importlib

    for source in compiled.source_info().inlined_sources:
        module = importlib.import_module(source.module)
        lines = inspect.getsourcelines(module)[0][source.firstlineno - 1 : source.lastlineno - 1]
        if hashlib.sha256("".join(lines).encode()).hexdigest() != source.checksum:
            return False
    return True


@contextlib.contextmanager
def _without_instance_forward(module: torch.nn.Module) -> Iterator[None]:
    """Take a wrapper installed as ``module.forward`` off the module for a while.

    torch pickles the traced module along with the saved code's guards; wrappers (the CUDA
    graph recorder, this class) hold locks and compiled code, cannot be pickled, and the
    traced code does not use them.
    """
    wrapper = module.__dict__.pop("forward", None)
    try:
        yield
    finally:
        if wrapper is not None:
            module.__dict__["forward"] = wrapper


class PrecompiledCall:
    """Call ``module``'s forward compiled, loading or saving the compiled code in ``folder``.

    Example:
        >>> import torch
        >>> call = PrecompiledCall(torch.nn.Linear(2, 2), "/tmp/inferkit-doctest")
        >>> call.saved, call.loaded  # nothing compiled before the first call
        (0, 0)

    """

    def __init__(
        self,
        module: torch.nn.Module,
        folder: str | os.PathLike[str],
        *,
        extra: str = "",
    ) -> None:
        self.module = module
        self.forward: Callable[..., Any] = module.forward
        self._signature = inspect.signature(self.forward)
        self.folder = Path(folder) / "precompiled"
        self.extra = extra
        self.loaded = 0
        self.saved = 0
        self._identity: str | None = None
        self._compiled: dict[Any, Any] = {}
        self._jit: Callable[..., Any] | None = None
        self._lock = threading.RLock()  # compiling in the process may happen while it is held
        self._noted = False
        self.mode = "precompiled" if precompile_supported() else "in-process"

    def _fallback(self, why: str) -> None:
        if self.mode == "precompiled":
            warnings.warn(
                f"inferkit: cannot keep compiled {type(self.module).__name__} code on disk "
                f"({why}); compiling in this process instead, as torch.compile does",
                RuntimeWarning,
                stacklevel=3,
            )
        self.mode = "in-process"

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Describe the call as the function sees it: ``f(x, tag=None)`` is ``f(x)``."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:  # let the call itself report a wrong signature
            return signature((args, kwargs))
        bound.apply_defaults()
        return signature(dict(bound.arguments))

    def _note(self, why: str) -> None:
        if not self._noted:
            self._noted = True
            warnings.warn(
                f"inferkit: cannot use kept {type(self.module).__name__} code here ({why})",
                RuntimeWarning,
                stacklevel=3,
            )

    def _jit_forward(self) -> Callable[..., Any]:
        with self._lock:
            if self._jit is None:
                self._jit = torch.compile(self.forward, fullgraph=True, dynamic=False)
            return self._jit

    def _path(self, key: Any) -> Path:
        if self._identity is None:
            device = next(self.module.parameters()).device
            self._identity = _module_identity(self.module, device, self.extra)
        call = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        return self.folder / f"{type(self.module).__name__}-{self._identity}-{call}.bin"

    def _load_or_compile(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        path = self._path(key)
        external = _wrapped_functions(self.module)
        if path.is_file():
            try:
                with path.open("rb") as file:
                    compiled = torch.compiler.load_compiled_function(file, external_data=external)
                if _sources_unchanged(compiled):
                    self.loaded += 1
                    return compiled
                warnings.warn(
                    f"inferkit: the code {path.name} was traced from has changed; compiling again",
                    RuntimeWarning,
                    stacklevel=4,
                )
            except Exception as e:  # a stale or damaged file: compile again below
                warnings.warn(
                    f"inferkit: ignoring precompiled file {path.name} ({first_line(e)}); "
                    "compiling again",
                    RuntimeWarning,
                    stacklevel=4,
                )
        options: dict[str, str | int | bool | Callable[..., Any]] = {
            "guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe
        }
        compiler = torch.compile(self.forward, fullgraph=True, dynamic=False, options=options)
        with _without_instance_forward(self.module):
            compiled = compiler.aot_compile((args, kwargs))  # type: ignore[attr-defined]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with _without_instance_forward(self.module):
                compiled.save_compiled_function(str(path), external_data=external)
        except Exception as e:  # still compiled: use it in this process
            warnings.warn(
                f"inferkit: cannot save compiled {type(self.module).__name__} code to "
                f"{self.folder} ({type(e).__name__}: {first_line(e)}); a new process will "
                "compile it again",
                RuntimeWarning,
                stacklevel=4,
            )
        else:
            self.saved += 1
        return compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the forward pass compiled for these inputs' shapes, dtypes and settings."""
        if self.mode == "precompiled":
            try:
                key = (
                    self._arguments(args, kwargs),
                    torch.is_grad_enabled(),
                    torch.is_inference_mode_enabled(),
                    torch.is_autocast_enabled(),
                )
            except TypeError as e:  # this call only: others may still use saved code
                self._note(f"{e}; this call is compiled in the process")
                return self._jit_forward()(*args, **kwargs)
            with self._lock:
                compiled = self._compiled.get(key)
                if compiled is None:
                    try:
                        compiled = self._load_or_compile(key, args, kwargs)
                    except Exception as e:
                        self._fallback(f"{type(e).__name__}: {first_line(e)}")
                        return self._jit_forward()(*args, **kwargs)
                    if hasattr(compiled, "disable_guard_check"):
                        compiled.disable_guard_check()  # checked below, once per call
                    self._compiled[key] = compiled
            if compiled.guard_check(self.module, *args, **kwargs):
                return compiled(self.module, *args, **kwargs)
            # The key missed something the compiled code depends on: never run it then.
            self._note("these inputs differ from those it was compiled for")
        return self._jit_forward()(*args, **kwargs)

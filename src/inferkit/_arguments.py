"""Hashable signatures of call arguments.

A signature says what a recorded CUDA graph or saved compiled code was made for, so a call with
other shapes, dtypes, layouts or settings gets its own.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["signature"]


def signature(value: Any, tensors: list[torch.Tensor] | None = None) -> Any:
    """Return a hashable description of ``value``, collecting its tensors in order.

    Tensors are described by shape, strides, dtype, device, ``requires_grad`` and whether they
    are inference tensors; containers by their contents (dicts in their own order); plain
    values by value. Anything else raises :class:`TypeError`.

    Example:
        >>> import torch
        >>> signature((torch.zeros(2, 3), None))[0]
        'tuple'
        >>> signature(torch.zeros(2, 3)) == signature(torch.zeros(3, 2).t())
        False

    """
    if isinstance(value, torch.Tensor):
        if tensors is not None:
            tensors.append(value)
        return (
            "T",
            tuple(value.shape),
            value.stride(),
            value.dtype,
            value.device,
            value.requires_grad,
            value.is_inference(),
        )
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(signature(v, tensors) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, signature(v, tensors)) for k, v in value.items()))
    if value is None or isinstance(value, (bool, int, float, str)):
        return ("V", value)
    raise TypeError(f"an argument of type {type(value).__name__} cannot be part of a signature")

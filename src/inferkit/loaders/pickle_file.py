"""Opt-in reading of pickle checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``), safely.

A pickle can run any code when it is unpickled. inferkit refuses these files unless the caller
passes ``allow_pickle=True``, and even then reads them only with PyTorch's restricted
unpickler (``torch.load(weights_only=True)``), which builds tensors and plain containers and
refuses everything else. That unpickler had holes in older releases (CVE-2025-32434, fixed in
torch 2.6; CVE-2026-24747 / GHSA-63cw-57p8-fm3p, fixed in torch 2.10), so older torch versions
are refused. ``weights_only=True`` is always passed explicitly, which
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot override; inferkit never falls back to full
unpickling.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from inferkit.errors import UnsupportedModelError, first_line
from inferkit.safetensors_io import DTYPE_NAMES, TensorEntry

__all__ = ["MIN_TORCH", "PickleWeights", "torch_is_safe_for_pickles"]

MIN_TORCH = (2, 10)
"""Oldest torch whose ``weights_only`` unpickler has the fixes inferkit relies on."""


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def torch_is_safe_for_pickles(version: str | None = None) -> bool:
    """Whether this torch's restricted unpickler has the fixes for the known bypasses.

    Example:
        >>> torch_is_safe_for_pickles("2.9.1"), torch_is_safe_for_pickles("2.10.0+cu130")
        (False, True)

    """
    return _version(version or torch.__version__) >= MIN_TORCH


def _state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in what a checkpoint unpickled to (A1111 files nest a ``state_dict``)."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UnsupportedModelError(
            f"{path} unpickled to a {type(loaded).__name__}, not a dictionary of weights",
            source=str(path),
        )
    tensors = {
        k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not tensors:
        raise UnsupportedModelError(f"{path} holds no tensors", source=str(path))
    for name, tensor in tensors.items():
        # The restricted unpickler also builds meta, sparse and subclassed tensors; weights
        # are plain dense tensors with data.
        if (
            type(tensor) not in (torch.Tensor, torch.nn.Parameter)
            or tensor.layout is not torch.strided
            or tensor.is_meta
        ):
            raise UnsupportedModelError(
                f"{path}: {name!r} is not a plain dense tensor ({tensor.layout}, device "
                f"{tensor.device.type}); the file is not a checkpoint inferkit reads",
                source=str(path),
            )
    return tensors


class PickleWeights:
    """A pickle checkpoint's tensors, read with the restricted unpickler, as a weight source.

    Example:
        >>> import tempfile, os, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "m.ckpt")
        >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
        >>> PickleWeights(path).read("w").tolist()
        [1.0, 1.0]

    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Unpickle ``path`` with ``weights_only=True``; refuse old torch and hostile files."""
        self.path = Path(path)
        if not torch_is_safe_for_pickles():
            raise UnsupportedModelError(
                f"{self.path} is a pickle checkpoint and this torch ({torch.__version__}) has "
                "known bypasses of its safe unpickler (fixed in torch 2.10); upgrade torch or "
                "convert the file to .safetensors on a machine you trust",
                source=str(self.path),
            )
        try:
            loaded = self._load(mmap=zipfile.is_zipfile(self.path))
        except Exception as e:  # hostile input: any failure to unpickle means "unreadable"
            raise UnsupportedModelError(
                f"{self.path} could not be read as a weights-only pickle ({first_line(e)}). "
                "It may be damaged, or it holds objects other than tensors, which inferkit will "
                "not unpickle; convert it to .safetensors on a machine you trust",
                source=str(self.path),
            ) from e
        self._tensors = _state_dict(loaded, self.path)
        self.tensors = {
            name: TensorEntry(name, DTYPE_NAMES.get(t.dtype, "F32"), tuple(t.shape), 0, 0)
            for name, t in self._tensors.items()
        }
        unknown = [n for n, t in self._tensors.items() if t.dtype not in DTYPE_NAMES]
        if unknown:
            raise UnsupportedModelError(
                f"{self.path}: tensor {unknown[0]!r} has dtype {self._tensors[unknown[0]].dtype}, "
                "which inferkit does not read",
                source=str(self.path),
            )
        self.metadata: dict[str, str] = {}

    def _load(self, *, mmap: bool) -> Any:
        return torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)

    @property
    def paths(self) -> tuple[Path, ...]:
        """The file."""
        return (self.path,)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor on the CPU, converted to ``dtype`` if it is floating point."""
        tensor = self._tensors[name]
        if dtype is not None and tensor.is_floating_point():
            return tensor.to(dtype)
        return tensor

    def read_to_device(
        self, names: Iterable[str], device: str | torch.device
    ) -> dict[str, torch.Tensor]:
        """Copy tensors to ``device`` in their stored dtype."""
        return {name: self._tensors[name].to(device) for name in names}

    def close(self) -> None:
        """Drop the tensors."""
        self._tensors = {}

    def __enter__(self) -> PickleWeights:
        """Return self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Drop the tensors."""
        self.close()

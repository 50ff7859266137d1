"""Filling modules from safetensors files: one file, or a sharded set with an index.

Every loader builds its networks on the ``meta`` device (no random initialisation, no memory)
and then fills each parameter from the file, in the target dtype and on the target device.
A weight the module needs and the file lacks, a tensor of the wrong shape, and (for diffusers
folders) a tensor the module does not know are errors that name the first few offenders, so a
model never runs with some weights left random.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import torch

from inferkit.errors import UnsupportedModelError
from inferkit.safetensors_io import DTYPES, SafetensorsFile, TensorEntry

__all__ = ["GROUP_BYTES", "WeightFiles", "WeightSource", "fill", "no_init", "open_weights"]


class WeightSource(Protocol):
    """Named tensors to fill modules from: safetensors files or an unpickled checkpoint."""

    @property
    def tensors(self) -> Mapping[str, TensorEntry]:
        """Each tensor's name, dtype and shape."""
        ...

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor on the CPU, floating point converted to ``dtype``."""
        ...

    def read_to_device(
        self, names: Iterable[str], device: str | torch.device
    ) -> dict[str, torch.Tensor]:
        """Many tensors on ``device`` in their stored dtype."""
        ...


@contextmanager
def no_init() -> Iterator[None]:
    """Create modules with parameters on ``meta``: no memory, no random initialisation."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        yield


class WeightFiles:
    """One or several safetensors files read as one set of named tensors.

    Example:
        >>> import tempfile, os, torch
        >>> from safetensors.torch import save_file
        >>> d = tempfile.mkdtemp()
        >>> save_file({"w": torch.ones(2)}, os.path.join(d, "m.safetensors"))
        >>> with WeightFiles([os.path.join(d, "m.safetensors")]) as w:
        ...     sorted(w.tensors)
        ['w']

    """

    def __init__(self, paths: Iterable[str | Path]) -> None:
        """Open every file and check that no tensor name appears in two of them."""
        self.files: list[SafetensorsFile] = []
        self.tensors: dict[str, TensorEntry] = {}
        self._owner: dict[str, SafetensorsFile] = {}
        try:
            for path in paths:
                f = SafetensorsFile(path)
                self.files.append(f)
                for name, entry in f.tensors.items():
                    if name in self._owner:
                        raise UnsupportedModelError(
                            f"tensor {name!r} is stored twice, in {self._owner[name].path.name} "
                            f"and {f.path.name}; the shards disagree about which copy is right. "
                            "Re-download or re-export the model",
                            source=str(f.path),
                        )
                    self._owner[name] = f
                    self.tensors[name] = entry
        except BaseException:
            self.close()
            raise

    @property
    def metadata(self) -> dict[str, str]:
        """The files' ``__metadata__`` strings (the first file's value wins on a clash)."""
        merged: dict[str, str] = {}
        for f in reversed(self.files):
            merged |= f.metadata
        return merged

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files, in the order given."""
        return tuple(f.path for f in self.files)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor on the CPU (see :meth:`SafetensorsFile.read`)."""
        return self._owner[name].read(name, dtype)

    def read_to_device(
        self, names: Iterable[str], device: str | torch.device
    ) -> dict[str, torch.Tensor]:
        """Copy many tensors to ``device`` (see :meth:`SafetensorsFile.read_to_device`)."""
        by_file: dict[int, list[str]] = {}
        for name in names:
            by_file.setdefault(id(self._owner[name]), []).append(name)
        out: dict[str, torch.Tensor] = {}
        for f in self.files:
            if id(f) in by_file:
                out |= f.read_to_device(by_file[id(f)], device)
        return out

    def close(self) -> None:
        """Close every file; tensors already read stay valid."""
        for f in self.files:
            f.close()

    def __enter__(self) -> WeightFiles:
        """Return self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the files."""
        self.close()


_SHARD_NAME = re.compile(r"^[\w.\-]+\.safetensors$")


def _shard_path(folder: Path, name: object, index: Path) -> Path:
    """Check a shard name from an index: a plain file name inside ``folder``, which exists."""
    text = str(name)
    unsafe = (
        not isinstance(name, str)
        or not text
        or PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or text.startswith(("\\\\", "//"))
        or ".." in PurePosixPath(text.replace("\\", "/")).parts
        or "/" in text
        or "\\" in text
        or ":" in text
    )
    if unsafe or not _SHARD_NAME.fullmatch(text):
        raise UnsupportedModelError(
            f"{index} names shard {name!r}, which is not a plain .safetensors file name in "
            f"{folder}; inferkit reads shards only from the index's own folder",
            source=str(index),
        )
    path = folder / text
    if not path.is_file():
        raise UnsupportedModelError(
            f"{index} names shard {text!r}, which is missing from {folder}; the download is "
            "incomplete: fetch the missing shard or the whole model again",
            source=str(index),
        )
    return path


def _read_index(index: Path) -> dict[str, str]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise UnsupportedModelError(
                    f"{index} lists {key!r} twice; the index is damaged, re-download it",
                    source=str(index),
                )
            seen[key] = value
        return seen

    try:
        data = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except (OSError, ValueError, RecursionError) as e:  # JSON errors are ValueErrors
        raise UnsupportedModelError(
            f"{index} could not be read as JSON ({type(e).__name__}: {str(e)[:200]}); "
            "re-download the model",
            source=str(index),
        ) from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UnsupportedModelError(
            f"{index} has no 'weight_map' object naming each tensor's shard", source=str(index)
        )
    return weight_map


def open_weights(folder: Path, stem: str, source: str) -> WeightFiles:
    """Open ``folder/stem.safetensors``, or the shards its ``.safetensors.index.json`` names.

    Shard names must be plain file names in ``folder`` (no ``..``, absolute, drive or UNC
    paths), every named shard must exist, every tensor of a shard must be where the index says,
    and no tensor may be in two shards.
    """
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return WeightFiles([single])
    if not index.is_file():
        others = sorted(p.name for p in folder.glob("*") if p.is_file())
        pickles = [n for n in others if n.endswith((".bin", ".ckpt", ".pt", ".pth"))]
        hint = (
            f"; it has only pickle weights ({', '.join(pickles)}), which inferkit does not load "
            "(convert them to safetensors)"
            if pickles
            else f"; it holds: {', '.join(others) or 'nothing'}"
        )
        raise UnsupportedModelError(
            f"{source!r}: {folder} has no {single.name} or {index.name}{hint}", source=source
        )
    weight_map = _read_index(index)
    shards: dict[str, Path] = {}
    for shard in weight_map.values():
        if not isinstance(shard, str):
            _shard_path(folder, shard, index)  # raises: not a file name
        elif shard not in shards:
            shards[shard] = _shard_path(folder, shard, index)
    files = WeightFiles(shards.values())
    try:
        for name, shard in weight_map.items():
            owner = files._owner.get(name)
            if owner is None or owner.path.name != shard:
                where = "no shard" if owner is None else owner.path.name
                raise UnsupportedModelError(
                    f"{index} puts {name!r} in {shard}, but it is in {where}; the index and "
                    "the shards do not match: re-download the model",
                    source=str(index),
                )
    except BaseException:
        files.close()
        raise
    return files


def _from_stored(tensor: torch.Tensor, transform: str) -> torch.Tensor:
    # A tensor of an unexpected shape is returned as it is; the shape check then names it.
    if transform == "conv1x1" and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    if transform == "transpose" and tensor.ndim == 2:
        return tensor.t().contiguous()
    return tensor


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


GROUP_BYTES = 512 * 1024 * 1024
"""Most stored bytes copied to a GPU at once before they are converted (bounds the load peak)."""


def fill(
    module: torch.nn.Module,
    f: WeightSource,
    mapping: Callable[[str], tuple[str, str]],
    dtype: torch.dtype,
    source: str,
    rename: Callable[[str], str] | None = None,
    device: str = "cpu",
    warnings: list[str] | None = None,
) -> set[str]:
    """Read every weight ``module`` needs from ``f`` onto ``device``; return the keys used.

    ``mapping`` turns a module key into the stored key and a transform (``"same"``,
    ``"conv1x1"``, ``"transpose"``, or ``"q"``/``"k"``/``"v"`` for a third of a fused
    projection). On a CUDA device the needed tensors travel in groups of at most
    :data:`GROUP_BYTES` stored bytes, each converted on the device before the next is read, so a
    load never holds more than one group beyond the model itself; tensors the module does not
    use are never copied. With a ``warnings`` list (``strict=False``), missing and wrongly
    shaped weights are set to zero and described in it instead of raising.

    Raises:
        UnsupportedModelError: a weight is missing or has the wrong shape (strict).

    """
    expected = module.state_dict()
    kind = type(module).__name__
    wanted: list[tuple[str, str, str]] = []  # module key, stored key, transform
    missing: list[str] = []
    for key in expected:
        original, transform = mapping(key)
        stored_key = rename(original) if rename else original
        if stored_key not in f.tensors:
            missing.append(stored_key)
            continue
        stored_float = DTYPES[f.tensors[stored_key].dtype].is_floating_point
        if stored_float != expected[key].is_floating_point():
            needed = "a floating-point" if expected[key].is_floating_point() else "an integer"
            raise UnsupportedModelError(
                f"{source!r}: weight {stored_key} is stored as {f.tensors[stored_key].dtype}, "
                f"but {kind} needs {needed} tensor there; the file is damaged or not a model "
                "inferkit knows",
                source=source,
            )
        wanted.append((key, stored_key, transform))
    used = {stored for _, stored, _ in wanted}
    loaded = _read_all(f, sorted(used, key=lambda n: f.tensors[n].start), dtype, device)
    state: dict[str, torch.Tensor] = {}
    for key, stored_key, transform in wanted:
        tensor = loaded[stored_key]
        if transform in ("q", "k", "v"):
            third = tensor.shape[0] // 3
            index = "qkv".index(transform)
            state[key] = tensor[index * third : (index + 1) * third]
        else:
            state[key] = _from_stored(tensor, transform)
    if missing:
        text = (
            f"{source!r} lacks {len(missing)} weights of its {kind}: {_shown(missing)}. The "
            "file is incomplete or of a layout inferkit does not know"
        )
        if warnings is None:
            raise UnsupportedModelError(text + " (strict=False loads it with zeros)", source=source)
        warnings.append(text + "; they were set to zero (strict=False)")
    wrong = [key for key, tensor in state.items() if tensor.shape != expected[key].shape]
    if wrong:
        shown = _shown(
            [f"{k} {tuple(state[k].shape)} (needs {tuple(expected[k].shape)})" for k in wrong]
        )
        text = (
            f"{source!r}: {len(wrong)} weights of its {kind} have the wrong shape: {shown}. The "
            "file is for a different architecture"
        )
        if warnings is None:
            raise UnsupportedModelError(text, source=source)
        warnings.append(text + "; they were set to zero (strict=False)")
    for key in [*(k for k in expected if k not in state), *wrong]:
        reference = expected[key]
        kept = dtype if reference.is_floating_point() else reference.dtype
        state[key] = torch.zeros(reference.shape, dtype=kept, device=device)
    module.load_state_dict(state, strict=True, assign=True)
    module.eval()
    module.requires_grad_(False)
    return used


def _read_all(
    f: WeightSource,
    names: list[str],
    dtype: torch.dtype,
    device: str,
    grouped: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Read ``names`` onto ``device``, floating point converted to ``dtype``.

    ``grouped`` (default: on CUDA devices) copies in groups with ``read_to_device``.
    """
    if not (grouped if grouped is not None else torch.device(device).type == "cuda"):
        return {name: f.read(name, dtype).to(device) for name in names}
    out: dict[str, torch.Tensor] = {}
    group: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        for name, tensor in f.read_to_device(group, device).items():
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        group.clear()
        size = 0

    for name in names:
        entry = f.tensors[name]
        group.append(name)
        size += entry.end - entry.start
        if size >= GROUP_BYTES:
            flush()
    if group:
        flush()
    return out

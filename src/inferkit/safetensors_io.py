"""A small, strict safetensors reader: header first, then tensors read straight into place.

inferkit reads checkpoints itself rather than through ``safetensors.safe_open`` so that

- the header is checked (size cap, entry count, offsets, dtypes) before anything else happens,
  and a bad file gets an error that says what is wrong with it;
- a load holds no second copy of the weights: tensors stored in the wanted dtype are
  copy-on-write views of the file, and tensors that need converting are read with plain file
  reads and converted one at a time.

Example:
    >>> import tempfile, os, torch
    >>> from safetensors.torch import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": torch.ones(2, 3)}, path)
    >>> with SafetensorsFile(path) as f:
    ...     f.tensors["w"].shape, f.read("w").sum().item()
    ((2, 3), 6.0)

"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import torch

from inferkit.errors import InvalidParameterError, ModelNotFoundError, UnsupportedModelError

__all__ = ["DTYPES", "DTYPE_NAMES", "HEADER_LIMIT", "SafetensorsFile", "TensorEntry", "write_file"]

HEADER_LIMIT = 25 * 1024 * 1024
"""Largest header accepted (bytes), as on the Hugging Face hub. Real checkpoints' headers are
well under 1 MB; safetensors' own 100 MB cap lets a 1.5-million-entry header take seconds and a
gigabyte to parse."""
ENTRY_LIMIT = 100_000
"""Most tensors accepted in one file (SDXL checkpoints hold about 2,500)."""

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dt: name for name, dt in DTYPES.items()}
"""The safetensors name of each torch dtype inferkit reads and writes."""
_SIZES = {name: torch.empty(0, dtype=dt).element_size() for name, dt in DTYPES.items()}


@attrs.frozen
class TensorEntry:
    """One tensor's record in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor's torch dtype."""
        return DTYPES[self.dtype]


def _bad(path: Path, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{path} is not a valid safetensors file: {what}. Re-download or re-export it",
        source=str(path),
    )


def _sniff(head: bytes) -> str | None:
    """Say what a file is when it is clearly not safetensors."""
    text = head.lstrip()[:200].lower()
    if text.startswith(b"version https://git-lfs"):
        return "this is a Git LFS pointer, not weights; fetch the real file with `git lfs pull`"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return (
            "this is an HTML page saved under a model name, not weights; download the file itself"
        )
    if head[:2] == b"PK":
        return "this is a zip archive (a PyTorch pickle checkpoint?), not safetensors"
    if head[:1] == b"\x80":
        return "this is a Python pickle, not safetensors"
    return None


class SafetensorsFile:
    """An open safetensors file whose header has been read and checked.

    Attributes:
        path: the file.
        tensors: the header's entries by name, in file order.
        metadata: the header's ``__metadata__`` strings.

    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open ``path`` and validate its header; no tensor data is read yet."""
        self.path = Path(path)
        if self.path.is_dir():
            raise _bad(self.path, "it is a directory, not a file")
        self._mm: mmap.mmap | None = None
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError as e:
            raise ModelNotFoundError(f"no such file: {self.path}", source=str(self.path)) from e
        except OSError as e:  # e.g. permission denied
            raise UnsupportedModelError(
                f"cannot open {self.path}: {e.strerror or e}; check its permissions",
                source=str(self.path),
            ) from e
        try:
            self.tensors, self.metadata, self._data_start = self._read_header()
        except BaseException:
            self._fh.close()
            raise

    def _read_header(self) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
        size = os.fstat(self._fh.fileno()).st_size
        prefix = self._fh.read(8)
        if len(prefix) < 8:
            what = "the file is empty" if size == 0 else f"only {size} bytes, shorter than a header"
            raise _bad(self.path, what)
        (length,) = struct.unpack("<Q", prefix)
        try:
            if length > HEADER_LIMIT:
                raise _bad(self.path, f"header length {length} exceeds the {HEADER_LIMIT}-byte cap")
            if length + 8 > size:
                raise _bad(
                    self.path,
                    f"header length {length} runs past the end of the file ({size} bytes)",
                )
            raw = self._fh.read(length)
            try:
                header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
            except (ValueError, RecursionError) as e:  # includes JSON and UTF-8 errors
                raise _bad(self.path, f"its header is not valid JSON ({e})") from e
        except UnsupportedModelError:
            # Only now guess what the file is: a length prefix may look like any bytes.
            self._fh.seek(0)
            sniffed = _sniff(self._fh.read(256))
            if sniffed:
                raise _bad(self.path, sniffed) from None
            raise
        if not isinstance(header, dict):
            raise _bad(self.path, "its header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise _bad(self.path, "__metadata__ must map names to strings")
        if len(header) > ENTRY_LIMIT:
            raise _bad(self.path, f"{len(header)} tensors is more than the {ENTRY_LIMIT} accepted")
        data_size = size - 8 - length
        entries = {name: _entry(self.path, name, info, data_size) for name, info in header.items()}
        ordered = sorted(entries.values(), key=lambda e: (e.start, e.end))
        position = 0
        for entry in ordered:
            if entry.start != position:
                kind = "overlap" if entry.start < position else "leave a gap"
                raise _bad(
                    self.path, f"tensor {entry.name!r} data would {kind} at byte {entry.start}"
                )
            position = entry.end
        if position != data_size:
            raise _bad(
                self.path,
                f"tensor data ends at byte {position} but the file has {data_size} data bytes "
                + ("(truncated download?)" if position > data_size else "(trailing bytes)"),
            )
        return (
            {e.name: e for e in sorted(entries.values(), key=lambda e: e.start)},
            meta,
            8 + length,
        )

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Return one tensor on the CPU, converted to ``dtype`` if given.

        A tensor already stored in ``dtype`` is a copy-on-write view of the file (no copy is
        made, and pages are read when first used). One that needs converting is read with a
        plain file read into a temporary buffer and converted, so the mapping is not touched.
        """
        entry = self.tensors[name]
        target = (
            entry.torch_dtype if dtype is None or not entry.torch_dtype.is_floating_point else dtype
        )
        offset = self._data_start + entry.start
        nbytes = entry.end - entry.start
        if target == entry.torch_dtype and offset % max(1, _SIZES[entry.dtype]) == 0 and nbytes:
            raw = torch.frombuffer(self._mapping(), dtype=torch.uint8, count=nbytes, offset=offset)
            return raw.view(entry.torch_dtype).reshape(entry.shape)
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            self._fh.seek(offset)
            got = self._fh.readinto(buffer.numpy().data)
            if got != nbytes:
                raise _bad(self.path, f"tensor {name!r} is cut short (file truncated?)")
        return buffer.view(entry.torch_dtype).reshape(entry.shape).to(target)

    def read_to_device(
        self,
        names: Iterable[str],
        device: str | torch.device,
        *,
        chunk_bytes: int = 32 * 1024 * 1024,
        threads: int = 8,
    ) -> dict[str, torch.Tensor]:
        """Copy many tensors to ``device`` in one pass; return them in their stored dtype.

        The tensors' bytes land in one device buffer (one allocation, contiguous runs of the
        file copied as large chunks); each tensor is a view into it. Several threads read
        chunks with ``pread`` into pinned host buffers, and each chunk's host-to-device copy
        overlaps the next read. No tensor is created on the CPU, so nothing passes through
        float32 or random initialisation. On a CPU ``device`` the same code path runs with
        ordinary buffers (used by tests).

        Example:
            >>> import tempfile, os, torch
            >>> from safetensors.torch import save_file
            >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
            >>> save_file({"a": torch.ones(2), "b": torch.arange(3.0)}, path)
            >>> with SafetensorsFile(path) as f:
            ...     f.read_to_device(["b"], "cpu")["b"].tolist()
            [0.0, 1.0, 2.0]

        """
        target = torch.device(device)
        entries = sorted((self.tensors[n] for n in set(names)), key=lambda e: e.start)
        runs: list[list[int]] = []  # [file start, file end, buffer position]
        position: dict[str, int] = {}
        total = 0
        for entry in entries:
            if entry.end == entry.start:
                continue
            if runs and runs[-1][1] == entry.start:
                runs[-1][1] = entry.end
            else:
                # Keep each run's offset modulo 16 as in the file, so that tensors the file
                # aligns stay aligned in the buffer.
                total += (entry.start - total) % 16
                runs.append([entry.start, entry.end, total])
            position[entry.name] = runs[-1][2] + entry.start - runs[-1][0]
            total = runs[-1][2] + runs[-1][1] - runs[-1][0]
        buffer = torch.empty(total, dtype=torch.uint8, device=target)
        chunks = [
            (start + at, min(chunk_bytes, end - start - at), where + at)
            for start, end, where in runs
            for at in range(0, end - start, chunk_bytes)
        ]
        self._copy_chunks(chunks, buffer, chunk_bytes, max(1, min(threads, len(chunks))))
        out: dict[str, torch.Tensor] = {}
        for entry in entries:
            if entry.name not in position:  # holds no bytes
                out[entry.name] = torch.empty(entry.shape, dtype=entry.torch_dtype, device=target)
                continue
            at, size = position[entry.name], entry.end - entry.start
            raw = buffer[at : at + size]
            if at % max(1, _SIZES[entry.dtype]):
                raw = raw.clone()  # unaligned in the file: give it its own aligned storage
            out[entry.name] = raw.view(entry.torch_dtype).reshape(entry.shape)
        return out

    def _copy_chunks(
        self,
        chunks: list[tuple[int, int, int]],
        buffer: torch.Tensor,
        chunk_bytes: int,
        threads: int,
    ) -> None:
        """Read ``(file offset, size, buffer position)`` chunks into ``buffer``."""
        cuda = buffer.is_cuda
        base = self._data_start
        ready: Any = None
        if cuda:
            # The copies run on side streams; they must not start before work already queued
            # on the current stream (which may still read memory ``buffer`` now reuses).
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(torch.cuda.current_stream(buffer.device))

        def worker(mine: list[tuple[int, int, int]]) -> None:
            host = torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=cuda)
            view = host.numpy().data.cast("B")
            stream = torch.cuda.Stream(device=buffer.device) if cuda else None  # type: ignore[no-untyped-call]
            if stream is not None:
                stream.wait_event(ready)
            done: Any = None
            with open(self.path, "rb") as fh:
                for offset, size, where in mine:
                    if done is not None:
                        done.synchronize()  # the previous copy out of ``host`` has finished
                    fh.seek(base + offset)
                    got = 0
                    while got < size:  # a read may return less than asked
                        n = fh.readinto(view[got:size])
                        if not n:
                            raise _bad(
                                self.path, f"tensor data at byte {base + offset} is cut short"
                            )
                        got += n
                    if stream is None:
                        buffer[where : where + size].copy_(host[:size])
                        continue
                    with torch.cuda.stream(stream):
                        buffer[where : where + size].copy_(host[:size], non_blocking=True)
                        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
                        done.record(stream)
            if done is not None:
                done.synchronize()

        shares = [chunks[i::threads] for i in range(threads)]
        if threads == 1:
            worker(shares[0])
            return
        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(worker, share) for share in shares]:
                future.result()

    def _mapping(self) -> mmap.mmap:
        if self._mm is None:
            # Private (copy-on-write) so that tensors are writable without touching the file.
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def close(self) -> None:
        """Close the file. Tensors already returned stay valid (they hold the mapping)."""
        self._mm = None
        self._fh.close()

    def __enter__(self) -> SafetensorsFile:
        """Return self."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the file."""
        self.close()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"tensor name {key!r} appears twice")
        out[key] = value
    return out


def _entry(path: Path, name: str, info: Any, data_size: int) -> TensorEntry:
    if "\x00" in name or not name:
        raise _bad(path, f"tensor name {name!r} is empty or contains a NUL byte")
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPES:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
    ):
        raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    count = 1
    for d in shape:
        count *= d
    if count * _SIZES[dtype] != offsets[1] - offsets[0]:
        raise _bad(
            path,
            f"tensor {name!r}: shape {shape} of {dtype} needs {count * _SIZES[dtype]} bytes "
            f"but its offsets span {offsets[1] - offsets[0]}",
        )
    if offsets[1] > data_size:
        raise _bad(path, f"tensor {name!r} ends past the end of the file (truncated download?)")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def write_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` as a safetensors file whose bytes depend only on the inputs.

    ``safetensors.torch.save_file`` writes the metadata in hash-map order, which changes from
    process to process; here header keys are sorted, so equal inputs give equal files (and
    equal sha256 sums). Tensors are laid out by decreasing element size, then name.

    Example:
        >>> import tempfile, os, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> write_file(path, {"w": torch.ones(2)}, {"b": "2", "a": "1"})
        >>> with SafetensorsFile(path) as f:
        ...     f.metadata, f.read("w").tolist()
        ({'a': '1', 'b': '2'}, [1.0, 1.0])

    """
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise InvalidParameterError(
                "tensors", name, f"has dtype {tensor.dtype}, which safetensors cannot store"
            )
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for name in order:
            tensor = tensors[name].detach().to("cpu").contiguous()
            if tensor.numel():
                out.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())

"""Content hashes of model files, computed once per file version.

Hub cache blobs of weight files are named by their sha256, so those cost nothing; other files
are hashed in 1 MiB blocks and remembered by (path, size, mtime) for the process's lifetime.

Example:
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "w.txt"
    >>> _ = f.write_text("hello")
    >>> file_sha256(f)[:10]
    '2cf24dba5f'

"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["content_sha256", "file_sha256", "files_sha256", "git_blob_sha1"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """Return the sha256 of one file (hex)."""
    real = Path(os.path.realpath(path))
    if _HEX64.match(real.name) and real.parent.name == "blobs":
        return real.name
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    with _lock:  # held while hashing, so concurrent first uses hash a file once
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = content_sha256(real)
    return cached


def _stream(path: Path, digest: Any) -> str:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return str(digest.hexdigest())


def content_sha256(path: Path) -> str:
    """Return the sha256 of a file's bytes, always reading them (no blob-name shortcut)."""
    return _stream(path, hashlib.sha256())


def git_blob_sha1(path: Path) -> str:
    """Return git's blob id of a file: the sha1 of ``blob <size>``, a NUL byte, then its bytes."""
    header = f"blob {path.stat().st_size}\0".encode()
    return _stream(path, hashlib.sha1(header, usedforsecurity=False))


def files_sha256(files: Iterable[Path]) -> str:
    """Return one sha256 over several files: of one file, its own hash; else a manifest's.

    The manifest lists each file's name with its folder (``unet/config.json``, and
    ``model_index.json`` at a diffusers folder's root) and its sha256, sorted, so the hash
    changes when any file's content or name changes and not when the model moves.
    """
    items = sorted(files)
    if len(items) == 1:
        return file_sha256(items[0])
    root = next((f.parent for f in items if f.name == "model_index.json"), None)

    def name_of(f: Path) -> str:
        return f.name if f.parent == root else f"{f.parent.name}/{f.name}"

    digest = hashlib.sha256()
    for name, f in sorted((name_of(f), f) for f in items):
        digest.update(f"{name}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()

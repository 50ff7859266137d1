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

__all__ = ["file_sha256", "files_sha256"]

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
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _lock:
        _cache[key] = value
    return value


def files_sha256(files: Iterable[Path], root: Path | None = None) -> str:
    """Return one sha256 over several files: of one file, its own hash; else a manifest's.

    The manifest lists each file's path (relative to ``root``) and sha256, sorted by path, so the
    hash changes when any file's content or name changes and not when the folder moves.
    """
    items = sorted(files)
    if len(items) == 1:
        return file_sha256(items[0])
    digest = hashlib.sha256()
    for f in items:
        name = f.relative_to(root).as_posix() if root is not None else f.name
        digest.update(f"{name}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()

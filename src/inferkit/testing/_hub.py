"""Write a model folder into a Hugging Face hub cache, in the hub library's own layout."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from inferkit.hashing import content_sha256, git_blob_sha1

__all__ = ["write_hub_cache_entry"]

_LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack")


def _blob_name(path: Path) -> str:
    if path.name.endswith(_LFS_SUFFIXES):
        return content_sha256(path)  # LFS blobs are named by their sha256
    return git_blob_sha1(path)


def write_hub_cache_entry(
    model_dir: str | os.PathLike[str],
    repo_id: str,
    cache_dir: str | os.PathLike[str],
    *,
    revision: str = "main",
    commit: str | None = None,
) -> Path:
    """Copy a model folder into ``cache_dir`` as if ``huggingface_hub`` had downloaded it.

    Writes ``models--{org}--{name}/blobs``, ``snapshots/{commit}`` (symlinks into blobs) and
    ``refs/{revision}``, so that offline resolution by repo id and revision finds it.

    Args:
        model_dir: a diffusers folder (for example from :func:`write_tiny_model`).
        repo_id: ``"org/name"``.
        cache_dir: the hub cache folder (``$HF_HOME/hub``).
        revision: the branch or tag name to point at the snapshot.
        commit: the 40-hex commit id; derived from the folder's content if omitted.

    Returns:
        The snapshot folder.

    Example:
        >>> import inferkit.testing, tempfile
        >>> src = inferkit.testing.tiny_model_path("sd1")
        >>> snap = inferkit.testing.write_hub_cache_entry(src, "me/tiny", tempfile.mkdtemp())
        >>> snap.parent.name
        'snapshots'

    """
    source = Path(model_dir)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    blobs = {p: _blob_name(p) for p in files}
    if commit is None:
        digest = hashlib.sha1()
        for p in files:
            digest.update(str(p.relative_to(source)).encode() + blobs[p].encode())
        commit = digest.hexdigest()
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    for p in files:
        blob = repo_dir / "blobs" / blobs[p]
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / p.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snapshot

"""Load hub repo ids (``org/name``) from the local Hugging Face cache, never hanging offline."""

from __future__ import annotations

import os
import re
from pathlib import Path

from inferkit.errors import IntegrityError, ModelNotFoundError, OfflineError
from inferkit.hashing import content_sha256, git_blob_sha1
from inferkit.loaders.base import Components, LoadOptions
from inferkit.loaders.folder import load_folder

__all__ = ["HubLoader", "hub_offline"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_WANTED = ["model_index.json", "*/config.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
_IGNORED = ["*.fp16.safetensors", "*.ckpt", "*.bin", "*.pt", "*.pth", "*.onnx", "*.msgpack"]


def hub_offline() -> bool:
    """Return whether ``HF_HUB_OFFLINE`` (read now, not at import) asks for offline mode.

    Example:
        >>> isinstance(hub_offline(), bool)
        True

    """
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cache_dir() -> Path:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home) / "hub"
    return Path(constants.HF_HUB_CACHE)


class HubLoader:
    """Resolves ``org/name`` through the Hugging Face cache, then loads the snapshot folder.

    With ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` only the cache is read; a repo or
    revision missing from it raises :class:`~inferkit.OfflineError` at once. The cache folder is
    read from ``HF_HUB_CACHE`` / ``HF_HOME`` when loading, not when inferkit is imported.

    Example:
        >>> import inferkit, torch
        >>> HubLoader().accepts("stabilityai/sdxl-turbo", inferkit.LoadOptions(dtype=torch.float16))
        True

    """

    name = "hub-cache"
    verifies = True

    def accepts(self, source: str, options: LoadOptions) -> bool:
        """Accept strings shaped like a repo id that are not an existing local path."""
        if not _REPO_ID.match(source) or source.startswith((".", "~")):
            return False
        return not Path(source).exists()

    def load(self, source: str, options: LoadOptions) -> Components:
        """Find the snapshot for the revision in the cache (or download it when allowed)."""
        snapshot = resolve_snapshot(source, options)
        if options.verify:
            verify_snapshot(snapshot, source)
        name = source.split("/", 1)[1]
        return load_folder(snapshot, source=source, options=options, loader=self.name, name=name)


def verify_snapshot(snapshot: Path, source: str) -> int:
    """Check every file of a cached snapshot against the hash its blob is named by.

    The hub cache stores each file once under ``blobs/<hash>``: the sha256 of the content for
    large (LFS) files, the git blob sha1 for the others. A file whose content no longer matches
    (a disk error, an interrupted copy, tampering) raises :class:`IntegrityError` naming it.
    Returns the number of files checked.
    """
    checked = 0
    for link in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        blob = link.resolve()
        name = blob.name
        if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            actual, kind = content_sha256(blob), "sha256"
        elif len(name) == 40 and all(c in "0123456789abcdef" for c in name):
            actual, kind = git_blob_sha1(blob), "git sha1"
        else:
            raise IntegrityError(
                f"{source!r}: cannot verify {link.relative_to(snapshot)}: it is not stored "
                f"under its hash ({blob}), as the hub library stores downloads (a copied cache "
                "without symlinks?); download the model again, or load without verify=True",
                source=source,
                path=str(link),
            )
        checked += 1
        if actual != name:
            relative = link.relative_to(snapshot)
            raise IntegrityError(
                f"{source!r}: cached file {relative} is corrupted: its {kind} is {actual[:12]}..., "
                f"but the cache entry {blob} says {name[:12]}...; delete that blob and download "
                "the model again",
                source=source,
                path=str(link),
            )
    return checked


def cached_folder(repo_id: str, options: LoadOptions) -> Path | None:
    """Return the cached snapshot of ``repo_id`` (revision ``main``) if present, else ``None``.

    Never touches the network, whatever ``HF_HUB_OFFLINE`` says.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_snapshot(repo_id: str, options: LoadOptions) -> Path:
    """Return the local snapshot folder of ``repo_id`` at ``options.revision``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local_only = options.local_files_only
    offline = hub_offline()
    if local_only is None:
        local_only = offline
    revision = options.revision or "main"
    cache = _cache_dir()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=True,
            allow_patterns=_WANTED,
            ignore_patterns=_IGNORED,
        )
        return Path(folder)
    except LocalEntryNotFoundError as e:
        if local_only:
            why = "HF_HUB_OFFLINE is set" if offline else "local_files_only=True"
            raise OfflineError(
                f"{repo_id!r} (revision {revision!r}) is not in the Hugging Face cache at "
                f"{cache}, and {why} so it cannot be downloaded. Download it on a connected "
                f"machine (`hf download {repo_id}`), point HF_HOME at a cache that has it, "
                "or pass a local folder",
                source=repo_id,
            ) from e
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            allow_patterns=_WANTED,
            ignore_patterns=_IGNORED,
            etag_timeout=10,
        )
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"hub repo {repo_id!r} has no revision {revision!r}; check the branch, tag or commit",
            source=repo_id,
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"hub repo {repo_id!r} does not exist or needs a token (`hf auth login`)",
            source=repo_id,
        ) from e
    except Exception as e:  # network failures come in many types; all mean "not available"
        raise OfflineError(
            f"could not download {repo_id!r} (revision {revision!r}): {e}. Check the network, "
            "or set HF_HUB_OFFLINE=1 and use a cached or local model",
            source=repo_id,
        ) from e
    return Path(folder)

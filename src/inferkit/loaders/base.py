"""What every loader returns, the Loader protocol, and the registry that picks one.

A loader turns a *source* (a path, a repo id, ...) into :class:`Components`: the networks, the
scheduler config and what was detected about the model. It knows files, not hardware.

Example:
    >>> import inferkit
    >>> [loader.name for loader in inferkit.registered_loaders()][:3]
    ['diffusers-folder', 'single-file', 'hub-cache']

"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from inferkit.errors import InvalidParameterError, ModelNotFoundError, UnsupportedModelError

__all__ = [
    "Components",
    "LoadOptions",
    "Loader",
    "registered_loaders",
    "register_loader",
    "select_loader",
    "unregister_loader",
]


@attrs.frozen(kw_only=True)
class LoadOptions:
    """What :meth:`Model.load` passes to a loader.

    Attributes:
        dtype: the dtype the weights should be loaded in.
        revision: hub revision (branch, tag or commit) for repo ids.
        local_files_only: ``True`` never downloads; ``None`` follows ``HF_HUB_OFFLINE``.
        vae: a replacement VAE that :meth:`Model.load` will load; loaders may then skip their
            own VAE (leaving ``modules["vae"]`` out) but must still fill ``vae_settings``.
        extra: loader-specific keyword arguments that :meth:`Model.load` did not know.
        device: where the weights will run; loaders may read them straight onto it (the
            policy moves whatever they leave elsewhere).
        allow_pickle: the caller accepts pickle checkpoints, read with the restricted
            unpickler only.
        strict: weights that do not fit the network are errors; with ``False`` they are
            recorded in ``Components.warnings`` instead.
        verify: check cached files against their content hashes before loading (hub cache).

    Example:
        >>> import torch
        >>> LoadOptions(dtype=torch.float32).local_files_only is None
        True

    """

    dtype: torch.dtype
    revision: str | None = None
    local_files_only: bool | None = None
    vae: str | os.PathLike[str] | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    device: str = "cpu"
    allow_pickle: bool = False
    strict: bool = True
    verify: bool = False


@attrs.frozen(kw_only=True)
class Components:
    """The loaded parts of a model and what the loader found out about it.

    Attributes:
        architecture: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"``.
        modules: the networks and tokenizers by diffusers' component names (``unet``, ``vae``,
            ``text_encoder``, ``tokenizer``, and for SDXL ``text_encoder_2``, ``tokenizer_2``).
        scheduler_config: the model's own scheduler config (the base for every sampler).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        name: a short human name for the model (folder or repo name).
        source: the source as the user gave it.
        loader: the name of the loader that produced this.
        files: the files the weights and configs came from (hashed for the model hash).
        evidence: one line per decision the loader made, saying what decided it.
        pipeline_options: pipeline-level settings the model carries (SDXL's
            ``force_zeros_for_empty_prompt``).
        variant: ``"base"``; ``"inpainting"`` for 9-channel inpainting UNets; another name for
            UNets whose input width differs from their output.
        vae_settings: the latent scaling the UNet was trained with (``scaling_factor``,
            ``force_upcast``, ``sample_size``), kept when the VAE is replaced.
        warnings: problems the loader tolerated because of ``strict=False`` (each result
            repeats them).

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> model.info.architecture
        'sd1'

    """

    architecture: str
    modules: Mapping[str, Any]
    scheduler_config: Mapping[str, Any]
    prediction_type: str
    name: str
    source: str
    loader: str
    files: tuple[Path, ...] = ()
    evidence: tuple[str, ...] = ()
    pipeline_options: Mapping[str, Any] = attrs.field(factory=dict)
    variant: str = "base"
    vae_settings: Mapping[str, Any] = attrs.field(factory=dict)
    warnings: tuple[str, ...] = ()


@runtime_checkable
class Loader(Protocol):
    """A way to turn a source into :class:`Components`.

    ``accepts`` must be cheap and must not raise for sources it does not handle; the first
    registered loader that accepts a source loads it. A loader may also have an ``options``
    attribute, the set of extra keyword arguments of :meth:`Model.load` it understands (they
    arrive in :attr:`LoadOptions.extra`); others are refused before loading.

    Example:
        >>> import inferkit
        >>> class Mine:
        ...     name = "mine"
        ...     def accepts(self, source, options): return source.startswith("mine:")
        ...     def load(self, source, options): raise NotImplementedError
        >>> isinstance(Mine(), inferkit.Loader)
        True

    """

    name: str

    def accepts(self, source: str, options: LoadOptions) -> bool:
        """Return whether this loader handles ``source``."""
        ...

    def load(self, source: str, options: LoadOptions) -> Components:
        """Load ``source``; raise an :class:`~inferkit.InferkitError` when it cannot."""
        ...


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
"""Suffixes of pickle-based checkpoints, which inferkit refuses to unpickle."""

_registry: list[Loader] = []
_lock = threading.Lock()
_plugin_lock = threading.Lock()
_plugins_loaded = False


def register_loader(loader: Loader, *, first: bool = False) -> None:
    """Add a loader to the registry (last by default, or ``first=True`` to take precedence).

    A loader registered under a name that is taken replaces the old one in its place.
    Installed packages can also declare loaders under the ``inferkit.loaders`` entry-point group.

    Example:
        >>> import inferkit
        >>> class Mine:
        ...     name = "example-mine"
        ...     def accepts(self, source, options): return source.startswith("mine:")
        ...     def load(self, source, options): raise NotImplementedError
        >>> inferkit.register_loader(Mine(), first=True)
        >>> inferkit.registered_loaders()[0].name
        'example-mine'
        >>> inferkit.unregister_loader("example-mine")

    """
    if not isinstance(loader, Loader):
        raise InvalidParameterError("loader", loader, "must have name, accepts() and load()")
    with _lock:
        for i, existing in enumerate(_registry):
            if existing.name == loader.name:
                _registry[i] = loader
                return
        if first:
            _registry.insert(0, loader)
        else:
            _registry.append(loader)


def unregister_loader(name: str) -> None:
    """Remove the loader called ``name`` from the registry (no error if absent).

    Example:
        >>> import inferkit
        >>> inferkit.unregister_loader("not-registered")

    """
    with _lock:
        _registry[:] = [loader for loader in _registry if loader.name != name]


def _load_plugins() -> None:
    global _plugins_loaded
    with _plugin_lock:
        if _plugins_loaded:
            return
        for ep in metadata.entry_points(group="inferkit.loaders"):
            try:
                factory = ep.load()
                register_loader(factory() if isinstance(factory, type) else factory)
            except Exception as e:  # a broken plugin must not break loading
                warnings.warn(f"inferkit loader plugin {ep.name!r} failed: {e}", stacklevel=2)
        _plugins_loaded = True


def registered_loaders() -> tuple[Loader, ...]:
    """Return the registered loaders in the order they are tried.

    Example:
        >>> import inferkit
        >>> "diffusers-folder" in [loader.name for loader in inferkit.registered_loaders()]
        True

    """
    _load_plugins()
    with _lock:
        return tuple(_registry)


def select_loader(source: str, options: LoadOptions) -> Loader:
    """Return the first loader that accepts ``source``.

    Raises:
        ModelNotFoundError: the source is a path that does not exist.
        UnsupportedModelError: the source exists but no loader accepts it.

    """
    for loader in registered_loaders():
        if loader.accepts(source, options):
            return loader
    path = Path(source).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        raise UnsupportedModelError(
            f"{source!r} is a pickle checkpoint ({path.suffix}), which can run code when loaded, "
            "so inferkit refuses it by default. Prefer the model's .safetensors release (or "
            "convert the file on a machine you trust); if you trust the file, pass "
            "allow_pickle=True, which reads it with torch's restricted weights-only unpickler",
            source=source,
        )
    if not path.exists():
        raise ModelNotFoundError(
            f"model not found: {source!r} is neither an existing file or folder nor a hub repo id "
            "('org/name'); check the path",
            source=source,
        )
    names = ", ".join(loader.name for loader in registered_loaders())
    raise UnsupportedModelError(
        f"{source!r} is not a model any loader understands (tried: {names}); a diffusers folder "
        "needs a model_index.json",
        source=source,
    )

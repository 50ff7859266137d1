"""Models shipped inside the inferkit package, loaded as ``inferkit:NAME``.

Example:
    >>> import inferkit
    >>> model = inferkit.Model.load("inferkit:shapes")
    >>> model.info.name, model.native_size
    ('shapes', 64)

"""

from __future__ import annotations

from pathlib import Path

import attrs

from inferkit.errors import ModelNotFoundError, UnsupportedModelError
from inferkit.loaders.base import Components, LoadOptions
from inferkit.loaders.single_file import SingleFileLoader

__all__ = ["ZOO", "ZOO_LORAS", "ZooLoader", "zoo_lora_path", "zoo_path"]

_HERE = Path(__file__).resolve().parent
ZOO: dict[str, Path] = {"shapes": _HERE / "shapes" / "weights"}
"""Packaged models by name: each folder holds ``<name>.safetensors`` and ``tokenizer/``."""

ZOO_LORAS: dict[str, Path] = {
    "shapes-night": _HERE / "shapes" / "weights" / "night-lora.safetensors",
}
"""Packaged LoRA adapters by name, for ``Model.with_lora("inferkit:NAME")``."""

PREFIX = "inferkit:"


def zoo_lora_path(name: str) -> Path:
    """Return the packaged LoRA file of adapter ``name`` (``"shapes-night"``).

    Raises:
        LoraError: no packaged adapter has this name, or its file is missing.

    Example:
        >>> zoo_lora_path("shapes-night").name
        'night-lora.safetensors'

    """
    from inferkit.errors import LoraError

    path = ZOO_LORAS.get(name)
    if path is None:
        raise LoraError(
            f"{PREFIX}{name} is not a packaged LoRA; available: "
            + ", ".join(PREFIX + n for n in ZOO_LORAS),
            path=PREFIX + name,
        )
    if not path.is_file():
        raise LoraError(
            f"the packaged LoRA {path} is missing from this installation; reinstall inferkit, or "
            f"train it with `python -m inferkit.zoo.shapes.train_lora --out {path.parent}`",
            path=PREFIX + name,
        )
    return path


def zoo_path(name: str) -> Path:
    """Return the packaged checkpoint of model ``name``.

    Raises:
        UnsupportedModelError: no packaged model has this name.
        ModelNotFoundError: the weights file is missing from this installation.

    """
    folder = ZOO.get(name)
    if folder is None:
        raise UnsupportedModelError(
            f"{PREFIX}{name} is not a packaged model; available: "
            + ", ".join(PREFIX + n for n in ZOO),
            source=PREFIX + name,
        )
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise ModelNotFoundError(
            f"the packaged weights {path} are missing from this installation; reinstall "
            f"inferkit, or train them with `python -m inferkit.zoo.{name}.train --out {folder}`",
            source=PREFIX + name,
        )
    return path


class ZooLoader:
    """Loads models that ship with inferkit (``inferkit:shapes``) through the single-file loader.

    Example:
        >>> import inferkit, torch
        >>> ZooLoader().accepts("inferkit:shapes", inferkit.LoadOptions(dtype=torch.float32))
        True

    """

    name = "zoo"

    def accepts(self, source: str, options: LoadOptions) -> bool:
        """Accept ``inferkit:NAME``."""
        return source.startswith(PREFIX)

    def load(self, source: str, options: LoadOptions) -> Components:
        """Load the packaged checkpoint with its packaged tokenizer."""
        name = source[len(PREFIX) :]
        path = zoo_path(name)
        extra = {"tokenizer": str(path.parent / "tokenizer")}
        parts = SingleFileLoader().load(str(path), attrs.evolve(options, extra=extra))
        return attrs.evolve(parts, name=name, source=source, loader=self.name)

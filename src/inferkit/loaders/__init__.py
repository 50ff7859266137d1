"""Loaders: turn a source into :class:`~inferkit.loaders.base.Components`."""

from __future__ import annotations

from inferkit.loaders.base import (
    Components,
    Loader,
    LoadOptions,
    register_loader,
    registered_loaders,
    select_loader,
    unregister_loader,
)
from inferkit.loaders.folder import FolderLoader
from inferkit.loaders.hub import HubLoader
from inferkit.loaders.single_file import SingleFileLoader

register_loader(FolderLoader())
register_loader(SingleFileLoader())
register_loader(HubLoader())


def _register_zoo() -> None:
    from inferkit.zoo import ZooLoader  # the zoo builds on the single-file loader

    register_loader(ZooLoader())


_register_zoo()

__all__ = [
    "Components",
    "FolderLoader",
    "HubLoader",
    "LoadOptions",
    "SingleFileLoader",
    "Loader",
    "registered_loaders",
    "register_loader",
    "select_loader",
    "unregister_loader",
]

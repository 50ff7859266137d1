"""Replacement VAEs: ``Model.load(..., vae="other_vae.safetensors")``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from inferkit._quiet import quiet_libraries
from inferkit.errors import ModelNotFoundError, UnsupportedModelError
from inferkit.loaders import ldm_layout as L
from inferkit.safetensors_io import SafetensorsFile

__all__ = ["load_vae"]


def load_vae(
    source: str | os.PathLike[str], dtype: torch.dtype, settings: Mapping[str, Any]
) -> tuple[Any, tuple[Path, ...], str]:
    """Load a VAE from a diffusers folder or an original-layout file; return it, files, evidence.

    The latent scaling of the model being loaded (``scaling_factor``, ``force_upcast``) is kept,
    since it belongs to the UNet's training, not to the VAE file.
    """
    from diffusers import AutoencoderKL

    from inferkit.loaders.single_file import vae_config
    from inferkit.loaders.weights import fill, no_init

    path = Path(source).expanduser()
    keep = {k: settings.get(k) for k in ("scaling_factor", "force_upcast", "sample_size")}
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise UnsupportedModelError(
                f"vae={str(path)!r} is a folder without config.json (or vae/config.json)",
                source=str(path),
            )
        with quiet_libraries():
            try:
                vae = AutoencoderKL.from_pretrained(
                    folder, local_files_only=True, use_safetensors=True, torch_dtype=dtype
                )
            except (OSError, ValueError) as e:
                raise UnsupportedModelError(
                    f"vae={str(path)!r} could not be loaded as an AutoencoderKL: {e}",
                    source=str(path),
                ) from e
        vae.register_to_config(**{k: v for k, v in keep.items() if v is not None})
        vae.eval().requires_grad_(False)
        files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
        return vae, files, f"VAE replaced from diffusers folder {folder}"
    if not path.exists():
        raise ModelNotFoundError(f"vae={str(path)!r} does not exist", source=str(path))
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedModelError(
            f"vae={str(path)!r} must be a .safetensors file or a diffusers folder", source=str(path)
        )
    with SafetensorsFile(path) as f:
        prefix = L.VAE_PREFIX if L.VAE_PREFIX + "encoder.conv_in.weight" in f.tensors else ""
        if prefix + "encoder.conv_in.weight" not in f.tensors:
            raise UnsupportedModelError(
                f"vae={str(path)!r} holds no VAE in the original layout (no encoder.conv_in.weight"
                f" or {L.VAE_PREFIX}encoder.conv_in.weight)",
                source=str(path),
            )
        config = vae_config(f.tensors, "sd1", int(keep["sample_size"] or 512), prefix=prefix)
        config |= {k: v for k, v in keep.items() if v is not None}
        with no_init():
            vae = AutoencoderKL(**config)
        levels = len(config["block_out_channels"])

        def strip(key: str) -> str:
            return prefix + key.removeprefix(L.VAE_PREFIX)

        fill(vae, f, lambda k: L.vae_key(k, levels), dtype, str(path), rename=strip)
    return vae, (path,), f"VAE replaced from file {path.name}"

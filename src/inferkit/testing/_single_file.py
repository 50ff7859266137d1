"""Write a diffusers-format model as one checkpoint in the original CompVis/Stability layout."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from inferkit.loaders import ldm_layout as L
from inferkit.safetensors_io import write_file
from inferkit.schedulers import SD_NOISE_SCHEDULE

__all__ = ["write_single_file"]


def _stored(tensor: torch.Tensor, transform: str) -> torch.Tensor:
    if transform == "conv1x1":
        return tensor.reshape(*tensor.shape, 1, 1)
    if transform == "transpose":
        return tensor.t().contiguous()
    return tensor


def _put(out: dict[str, torch.Tensor], state: dict[str, torch.Tensor], mapping: Any) -> None:
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        original, transform = mapping(key)
        if transform in ("q", "k", "v"):
            fused.setdefault(original, {})[transform] = tensor
        else:
            out[original] = _stored(tensor, transform).contiguous()
    for original, parts in fused.items():
        out[original] = torch.cat([parts["q"], parts["k"], parts["v"]]).contiguous()


def write_single_file(
    model_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    ema: bool = False,
    markers: Iterable[str] = (),
    dtype: torch.dtype | None = None,
    include_vae: bool = True,
) -> Path:
    """Write the diffusers model in ``model_dir`` as one original-layout ``.safetensors`` file.

    The file looks like the ones AUTOMATIC1111, ComfyUI and model sites use: UNet under
    ``model.diffusion_model.``, VAE under ``first_stage_model.``, text encoders under
    ``cond_stage_model.`` (SD1.x: CLIP by HF names; SD2.x: OpenCLIP with the extra, unused last
    layer and ``text_projection``) or ``conditioner.embedders.N.`` (SDXL), plus the training
    buffers real files carry (``betas``, ``alphas_cumprod``) and ``modelspec`` metadata.

    Args:
        model_dir: a diffusers folder of family sd1, sd2 or sdxl (e.g. from write_tiny_model).
        path: the ``.safetensors`` file to write.
        ema: also write EMA copies of the UNet weights (``model_ema.*``, slightly perturbed).
        markers: marker keys to add, such as ``"v_pred"`` or ``"ztsnr"``.
        dtype: store floating-point tensors in this dtype (default: as loaded, float32).
        include_vae: write the VAE (a checkpoint without one tests replacement VAEs).

    Example:
        >>> import inferkit, inferkit.testing, tempfile, os
        >>> src = inferkit.testing.tiny_model_path("sd1")
        >>> out = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> f = inferkit.testing.write_single_file(src, out)
        >>> inferkit.Model.load(f, tokenizer=src / "tokenizer").info.loader
        'single-file'

    """
    from inferkit.loaders.base import LoadOptions
    from inferkit.loaders.folder import load_folder

    root = Path(model_dir)
    parts = load_folder(
        root,
        source=str(root),
        options=LoadOptions(dtype=torch.float32),
        loader="writer",
        name=root.name,
    )
    family = parts.architecture
    modules = parts.modules
    out: dict[str, torch.Tensor] = {}
    unet = modules["unet"]
    up_attention = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    lpb = unet.config.layers_per_block
    unet_state = unet.state_dict()
    _put(out, unet_state, lambda k: (L.unet_key(k, lpb, up_attention), "same"))
    if ema:
        generator = torch.Generator().manual_seed(1)
        for key in unet_state:
            original = L.unet_key(key, lpb, up_attention)
            noise = torch.randn(out[original].shape, generator=generator) * 0.01
            out[L.ema_key(original)] = (out[original] + noise).contiguous()
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    if include_vae:
        levels = len(modules["vae"].config.block_out_channels)
        _put(out, modules["vae"].state_dict(), lambda k: L.vae_key(k, levels))
    if family == "sdxl_refiner":
        te2 = modules["text_encoder_2"].state_dict()
        _put(out, te2, lambda k: L.openclip_key(k, L.REFINER_OPENCLIP_PREFIX))
    te = modules["text_encoder"].state_dict() if "text_encoder" in modules else {}
    if family == "sd1":
        _put(out, te, lambda k: L.clip_key(k, L.CLIP_PREFIX))
        out[L.CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    elif family == "sd2":
        _put(out, te, lambda k: L.openclip_key(k, L.OPENCLIP_PREFIX))
        _add_unused_openclip_layer(out, L.OPENCLIP_PREFIX, modules["text_encoder"].config)
    elif family == "sdxl":
        _put(out, te, lambda k: L.clip_key(k, L.SDXL_CLIP_PREFIX))
        te2 = modules["text_encoder_2"].state_dict()
        _put(out, te2, lambda k: L.openclip_key(k, L.SDXL_OPENCLIP_PREFIX))
        out[L.SDXL_OPENCLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    start, end = SD_NOISE_SCHEDULE["beta_start"], SD_NOISE_SCHEDULE["beta_end"]
    steps = SD_NOISE_SCHEDULE["num_train_timesteps"]
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    out["betas"] = betas.float()
    out["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    for marker in markers:
        out[marker] = torch.tensor([])
    if dtype is not None:
        buffers = {"betas", "alphas_cumprod"}  # training buffers stay float32, as in real files
        out = {
            k: v.to(dtype) if v.is_floating_point() and k not in buffers else v
            for k, v in out.items()
        }
    size = unet.config.sample_size * 2 ** (len(modules["vae"].config.block_out_channels) - 1)
    metadata = {
        "modelspec.architecture": {
            "sd1": "stable-diffusion-v1",
            "sd2": "stable-diffusion-v2-768-v",
        }.get(family, "stable-diffusion-xl-v1-base"),
        "modelspec.resolution": f"{size}x{size}",
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, out, metadata)
    return target


def _add_unused_openclip_layer(out: dict[str, torch.Tensor], prefix: str, config: Any) -> None:
    """SD2 files hold one more OpenCLIP layer than the UNet is conditioned on, and a projection."""
    generator = torch.Generator().manual_seed(2)
    last = config.num_hidden_layers - 1
    source = f"{prefix}transformer.resblocks.{last}."
    target = f"{prefix}transformer.resblocks.{last + 1}."
    for key in [k for k in out if k.startswith(source)]:
        tensor = out[key]
        out[target + key[len(source) :]] = tensor + torch.randn(tensor.shape, generator=generator)
    width = config.hidden_size
    out[prefix + "text_projection"] = torch.randn((width, width), generator=generator)

"""Builders of tiny SD1.x / SD2.x / SDXL models in diffusers format."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import torch

from inferkit._bpe import write_clip_tokenizer
from inferkit._quiet import quiet_libraries
from inferkit.schedulers import SD_NOISE_SCHEDULE

__all__ = ["ARCHITECTURES", "tiny_model_path", "write_tiny_model"]

Architecture = Literal["sd1", "sd2", "sdxl", "sdxl_refiner"]
ARCHITECTURES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sdxl_refiner")
"""The families :func:`write_tiny_model` can write."""

# Widths follow the families' conventions that weights cannot show, so that single-file copies
# of these models load with the same architecture: text encoders and SD2/SDXL attention use
# 64-wide heads, SD1 attention 8 heads, every GroupNorm 32 groups.
_TEXT_WIDTH = 64
# SDXL's second encoder is wider than its first, as in the real model (1280 vs 768).
_TEXT_WIDTH_2 = 128


def _text_encoder(vocab_size: int, *, act: str, projection: bool, width: int = _TEXT_WIDTH) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config)


def _vae(*, force_upcast: bool) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215 if not force_upcast else 0.13025,
        force_upcast=force_upcast,
    )


def _unet(architecture: Architecture, inpainting: bool = False) -> Any:
    from diffusers import UNet2DConditionModel

    common: dict[str, Any] = {
        "sample_size": 8,
        # Inpainting UNets also see the mask (1) and the masked image's latents (4).
        "in_channels": 9 if inpainting else 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 64) if architecture == "sd1" else (64, 128),
        "norm_num_groups": 32,
    }
    if architecture == "sd1":
        return UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_TEXT_WIDTH,
            attention_head_dim=8,
        )
    if architecture == "sd2":
        return UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_TEXT_WIDTH,
            attention_head_dim=(1, 2),
            use_linear_projection=True,
        )
    refiner = architecture == "sdxl_refiner"
    # The refiner sees only the second text encoder and one more size id less (5 time ids:
    # the aesthetic score replaces the target size).
    return UNet2DConditionModel(
        **common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_WIDTH_2 if refiner else _TEXT_WIDTH + _TEXT_WIDTH_2,
        attention_head_dim=(1, 2),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=(5 if refiner else 6) * 8 + _TEXT_WIDTH_2,
    )


def _spread_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    # Default initialisation leaves some layers (e.g. zero-initialised outputs) inert, so every
    # image would be the same flat grey; spread weights so that images differ with the noise.
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


def write_tiny_model(
    path: str | os.PathLike[str],
    architecture: str = "sd1",
    *,
    seed: int = 0,
    inpainting: bool = False,
) -> Path:
    """Write a tiny random-weight model in diffusers folder format and return its path.

    Args:
        path: folder to write into (created if missing).
        architecture: ``"sd1"``, ``"sd2"`` (v-prediction, linear attention projections, OpenCLIP
            style text encoder), ``"sdxl"`` (two text encoders, size/crop conditioning) or
            ``"sdxl_refiner"`` (second encoder only, aesthetic-score conditioning).
        seed: seed of the weights; the same seed writes the same weights.
        inpainting: write an inpainting variant (a 9-channel UNet input: noise, mask and
            masked image), as the ``*-inpainting`` checkpoints are.

    Example:
        >>> import inferkit.testing, tempfile
        >>> p = inferkit.testing.write_tiny_model(tempfile.mkdtemp(), "sdxl")
        >>> (p / "model_index.json").exists()
        True

    """
    with quiet_libraries():
        from diffusers import (
            DDIMScheduler,
            EulerDiscreteScheduler,
            PNDMScheduler,
            StableDiffusionPipeline,
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLPipeline,
        )
        from transformers import CLIPTokenizer

    if architecture not in ARCHITECTURES:
        from inferkit.errors import InvalidParameterError

        raise InvalidParameterError(
            "architecture", architecture, f"must be one of {', '.join(ARCHITECTURES)}"
        )
    arch: Architecture = architecture  # type: ignore[assignment]
    if inpainting and arch == "sdxl_refiner":
        from inferkit.errors import InvalidParameterError

        raise InvalidParameterError("inpainting", inpainting, "has no SDXL refiner variant")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok_dir = root / "_tok"
        vocab_size = write_clip_tokenizer(
            tok_dir,
            words=("red", "the", "circle"),
            pad_token="!" if arch == "sd2" else "<|endoftext|>",
        )
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        unet = _unet(arch, inpainting)
        vae = _vae(force_upcast=arch.startswith("sdxl"))
        act = "gelu" if arch == "sd2" else "quick_gelu"
        text_encoder = _text_encoder(vocab_size, act=act, projection=False)
        modules: list[torch.nn.Module] = [unet, vae]
        if arch != "sdxl_refiner":
            modules.append(text_encoder)
        if arch.startswith("sdxl"):
            text_encoder_2 = _text_encoder(
                vocab_size, act="gelu", projection=True, width=_TEXT_WIDTH_2
            )
            modules.append(text_encoder_2)
        for module in modules:
            _spread_weights(module, generator)
        pipe: Any
        scheduler: Any
        if arch == "sd1":
            scheduler = PNDMScheduler(
                **SD_NOISE_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False
            )
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        elif arch == "sd2":
            scheduler = DDIMScheduler(
                **SD_NOISE_SCHEDULE,
                prediction_type="v_prediction",
                set_alpha_to_one=False,
                clip_sample=False,
            )
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        elif arch == "sdxl_refiner":
            scheduler = EulerDiscreteScheduler(**SD_NOISE_SCHEDULE, timestep_spacing="leading")
            pipe = StableDiffusionXLImg2ImgPipeline(
                vae=vae,
                text_encoder=None,
                text_encoder_2=text_encoder_2,
                tokenizer=None,
                tokenizer_2=tokenizer,
                unet=unet,
                scheduler=scheduler,
                requires_aesthetics_score=True,
                force_zeros_for_empty_prompt=False,
            )
        else:
            scheduler = EulerDiscreteScheduler(**SD_NOISE_SCHEDULE, timestep_spacing="leading")
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=text_encoder_2,
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=unet,
                scheduler=scheduler,
                force_zeros_for_empty_prompt=True,
            )
        if inpainting:
            pipe = _as_inpainting(pipe, arch)
        with quiet_libraries():
            pipe.save_pretrained(root, safe_serialization=True)
    for leftover in tok_dir.iterdir():
        leftover.unlink()
    tok_dir.rmdir()
    return root


def _as_inpainting(pipe: Any, arch: Architecture) -> Any:
    """Return the same modules under the family's inpainting pipeline class."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    if arch == "sdxl":
        return StableDiffusionXLInpaintPipeline(
            **pipe.components, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True
        )
    return StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)


_cache_lock = threading.Lock()
_cache: dict[str, Path] = {}


def tiny_model_path(architecture: str = "sd1") -> Path:
    """Return a tiny model of ``architecture``, written once per process into a temporary folder.

    Example:
        >>> import inferkit.testing
        >>> inferkit.testing.tiny_model_path("sd1") == inferkit.testing.tiny_model_path("sd1")
        True

    """
    with _cache_lock:
        if architecture not in _cache:
            folder = tempfile.mkdtemp(prefix=f"inferkit-tiny-{architecture}-")
            _cache[architecture] = write_tiny_model(folder, architecture)
        return _cache[architecture]

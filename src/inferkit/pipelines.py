"""Build the diffusers pipeline for a family from loaded components."""

from __future__ import annotations

from typing import Any

from inferkit.loaders.base import Components

__all__ = [
    "build_img2img_pipeline",
    "build_inpaint_pipeline",
    "build_pipeline",
    "vae_scale_factor",
]


def build_pipeline(components: Components, scheduler: Any) -> Any:
    """Return a text-to-image diffusers pipeline over ``components`` (no safety checker).

    Example:
        >>> import inferkit
        >>> m = inferkit.Model.load(inferkit.testing.tiny_model_path("sd2"))
        >>> type(m.pipeline).__name__
        'StableDiffusionPipeline'

    """
    from diffusers import (
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    mods = dict(components.modules)
    if components.architecture == "sdxl_refiner":
        return StableDiffusionXLImg2ImgPipeline(
            vae=mods["vae"],
            text_encoder=None,
            text_encoder_2=mods["text_encoder_2"],
            tokenizer=None,
            tokenizer_2=mods["tokenizer_2"],
            unet=mods["unet"],
            scheduler=scheduler,
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=bool(
                components.pipeline_options.get("force_zeros_for_empty_prompt", False)
            ),
            add_watermarker=False,
        )
    if components.architecture == "sdxl":
        return StableDiffusionXLPipeline(
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            text_encoder_2=mods["text_encoder_2"],
            tokenizer=mods["tokenizer"],
            tokenizer_2=mods["tokenizer_2"],
            unet=mods["unet"],
            scheduler=scheduler,
            force_zeros_for_empty_prompt=bool(
                components.pipeline_options.get("force_zeros_for_empty_prompt", True)
            ),
            add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=mods["vae"],
        text_encoder=mods["text_encoder"],
        tokenizer=mods["tokenizer"],
        unet=mods["unet"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_img2img_pipeline(pipeline: Any, components: Components) -> Any:
    """Return an image-to-image pipeline over ``pipeline``'s own modules (nothing is copied).

    Example:
        >>> import inferkit
        >>> m = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> type(build_img2img_pipeline(m.pipeline, m._components)).__name__
        'StableDiffusionImg2ImgPipeline'

    """
    return _sibling(pipeline, components, "Img2Img")


def build_inpaint_pipeline(pipeline: Any, components: Components) -> Any:
    """Return an inpainting pipeline over ``pipeline``'s own modules (nothing is copied).

    diffusers' inpainting pipelines serve both kinds of checkpoint: a 9-channel UNet gets the
    mask and the masked image as input; a 4-channel one has the unmasked area blended back
    into its latents after every step.

    Example:
        >>> import inferkit
        >>> m = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> type(build_inpaint_pipeline(m.pipeline, m._components)).__name__
        'StableDiffusionInpaintPipeline'

    """
    return _sibling(pipeline, components, "Inpaint")


def _sibling(pipeline: Any, components: Components, kind: str) -> Any:
    """Build diffusers' ``StableDiffusion[XL]<kind>Pipeline`` over ``pipeline``'s modules."""
    import diffusers

    if components.architecture == "sdxl":
        sibling: Any = getattr(diffusers, f"StableDiffusionXL{kind}Pipeline")(
            **pipeline.components,
            requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=bool(pipeline.config.force_zeros_for_empty_prompt),
            add_watermarker=False,
        )
    else:
        sibling = getattr(diffusers, f"StableDiffusion{kind}Pipeline")(
            **pipeline.components, requires_safety_checker=False
        )
    sibling.set_progress_bar_config(disable=True)
    return sibling


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent cell: 2 ** (number of VAE levels - 1), 8 for Stable Diffusion."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))

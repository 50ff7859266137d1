"""One generation run: encode the prompt, denoise each batch of images, decode each image.

The diffusers pipeline does the numerical work of the denoising loop; this module owns what
inferkit promises around it: per-image seeds and noise, the sampler built fresh for each run,
progress and cancellation, VAE precision, and timings for each stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from inferkit.errors import InferenceCancelled, NumericalError
from inferkit.images import paste_unmasked
from inferkit.params import ResolvedParams
from inferkit.policy import ExecutionPlan
from inferkit.prompts import encode_long, needs_own_encoding
from inferkit.results import StepInfo, Timings
from inferkit.schedulers import SamplerChoice, build_scheduler
from inferkit.seeds import generators, image_seeds, initial_noise, slerp, varied_noise

__all__ = ["RunOutput", "StepCallback", "run"]

StepCallback = Callable[[StepInfo], "bool | None"]
"""Called after every denoising step; returning ``False`` cancels the run."""


@attrs.frozen
class RunOutput:
    """Decoded images, stage timings and loop iterations of one run."""

    images: tuple[Any, ...]
    timings: Timings
    denoising_steps: int
    notes: tuple[str, ...] = ()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Progress:
    """Counts steps across batches, feeds the tqdm bar and the user's callback."""

    def __init__(self, batches: int, callback: StepCallback | None, show_bar: bool) -> None:
        self.batches = batches
        self.callback = callback
        self.show_bar = show_bar
        self.done = 0
        self.total = 0
        self.started = time.perf_counter()
        self.bar: Any = None
        self.first_bad: torch.Tensor | None = None
        self.counter: torch.Tensor | None = None
        self.batch_steps = 0

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs.get("latents")
        if isinstance(latents, torch.Tensor):
            # Kept on the device (no synchronisation per step); read once after the loop.
            if self.first_bad is None or self.counter is None:
                self.first_bad = torch.zeros((), dtype=torch.long, device=latents.device)
                self.counter = torch.zeros((), dtype=torch.long, device=latents.device)
            self.counter.add_(1)
            bad = ~torch.isfinite(latents).all()
            self.first_bad = torch.where(bad & (self.first_bad == 0), self.counter, self.first_bad)
        self.batch_steps += 1
        if self.total == 0:
            # _num_timesteps is what the loop runs (image-to-image runs the schedule's tail).
            per_batch = getattr(pipe, "_num_timesteps", None) or len(pipe.scheduler.timesteps)
            self.total = int(per_batch) * self.batches
            if self.show_bar:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, desc="inferkit", unit="step", leave=False)
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            info = StepInfo(
                step=self.done,
                total=self.total,
                timestep=float(t),
                elapsed=time.perf_counter() - self.started,
            )
            try:
                keep_going = self.callback(info)
            except InferenceCancelled:
                raise InferenceCancelled(self.done, self.total) from None
            if keep_going is False:
                raise InferenceCancelled(self.done, self.total)
        return kwargs

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _encode(
    pipe: Any, architecture: str, params: ResolvedParams, device: torch.device
) -> dict[str, Any]:
    do_cfg = params.guidance > 1
    tokenizer = getattr(pipe, "tokenizer", None)
    texts = (params.prompt, params.negative_prompt)
    if tokenizer is not None and needs_own_encoding(
        tokenizer, *texts, weighting=params.prompt_weighting
    ):
        return encode_long(
            pipe, architecture, *texts, device, do_cfg, weighting=params.prompt_weighting
        )
    negative = params.negative_prompt or None
    if architecture.startswith("sdxl"):
        pe, npe, ppe, nppe = pipe.encode_prompt(
            prompt=params.prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative,
        )
        out = {"prompt_embeds": pe, "pooled_prompt_embeds": ppe}
        if do_cfg:
            out |= {"negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": nppe}
        return out
    pe, npe = pipe.encode_prompt(params.prompt, device, 1, do_cfg, negative_prompt=negative)
    out = {"prompt_embeds": pe}
    if do_cfg:
        out["negative_prompt_embeds"] = npe
    return out


def _denoise(
    pipeline: Any,
    embeds: dict[str, Any],
    gens: list[torch.Generator],
    params: ResolvedParams,
    progress: _Progress,
    **start: Any,
) -> torch.Tensor:
    """Run one batch (one generator per image) through ``pipeline``; return its latents.

    ``start`` says where to begin: ``latents=noise`` (text-to-image), ``image=`` and
    ``strength=`` (image-to-image), plus ``mask_image=`` (inpainting).
    """
    if params.guidance_rescale:
        start["guidance_rescale"] = params.guidance_rescale
    out = pipeline(
        **_repeat(embeds, len(gens)),
        **start,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance,
        generator=gens,
        output_type="latent",
        callback_on_step_end=progress,
        return_dict=False,
    )
    latents: torch.Tensor = out[0]
    return latents


def _vary_added_noise(
    scheduler: Any, variation_seeds: list[int], strength: float, noise_device: Any
) -> None:
    """Blend the variation seeds' noise into the noise image-to-image adds to the init latents.

    diffusers draws that noise inside the pipeline, from the seeds' generators, and hands it to
    ``scheduler.add_noise`` once; this scheduler is built for one batch, so wrapping its
    ``add_noise`` changes that call only. The variation noise is drawn as diffusers draws the
    seed's (``randn_tensor``, same shape, device and dtype, after the VAE's sample), so strength
    1 is the variation seed's noise (exactly, when the VAE and UNet share a dtype).
    """
    from diffusers.utils.torch_utils import randn_tensor

    add_noise = scheduler.add_noise

    def blended(samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> Any:
        gens = generators(variation_seeds, noise_device)
        # The pipeline's generators first drew the VAE's latent sample, of the same shape.
        randn_tensor(noise.shape, generator=gens, device=noise.device, dtype=noise.dtype)
        other = randn_tensor(noise.shape, generator=gens, device=noise.device, dtype=noise.dtype)
        return add_noise(samples, slerp(strength, noise, other), timesteps)

    scheduler.add_noise = blended


def img2img_strength(steps: int, strength: float) -> float:
    """Return the strength to give diffusers so that it runs ``round(steps * strength)`` steps.

    diffusers runs ``int(steps * strength)`` steps; aiming half a step above the wanted count
    means float rounding cannot lose one (``0.6 * 30`` is 17.999...).

    Example:
        >>> int(30 * img2img_strength(30, 0.6))
        18

    """
    return min(1.0, (round(steps * strength) + 0.5) / steps)


def _repeat(embeds: dict[str, Any], n: int) -> dict[str, Any]:
    return {k: v.repeat(n, *([1] * (v.ndim - 1))) for k, v in embeds.items()}


def _unscale(z: torch.Tensor, config: Any) -> torch.Tensor:
    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        m = torch.tensor(mean).view(1, -1, 1, 1).to(z.device, z.dtype)
        s = torch.tensor(std).view(1, -1, 1, 1).to(z.device, z.dtype)
        return z * s / float(config.scaling_factor) + m
    return z / float(config.scaling_factor)


def _decode_fp32(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """Decode once with the VAE in float32, then put it back in its dtype."""
    from inferkit._cuda_graphs import forget_graphs

    dtype = vae.dtype
    vae.to(torch.float32)
    try:
        pixels: torch.Tensor = vae.decode(_unscale(z.float(), vae.config), return_dict=False)[0]
    finally:
        vae.to(dtype)
        forget_graphs(vae)  # recorded graphs point at the weights' old memory
    return pixels


def decode(
    pipe: Any, latents: torch.Tensor, vae_dtype: torch.dtype, notes: list[str] | None = None
) -> list[Any]:
    """Decode latents to PIL images with the VAE in ``vae_dtype``, one image at a time.

    Pixels that come out NaN or infinite (a half-precision VAE overflowing) are decoded again
    with the VAE in float32, and a line is added to ``notes``.
    """
    vae = pipe.vae
    images: list[Any] = []
    for i in range(latents.shape[0]):
        z = latents[i : i + 1]
        pixels = vae.decode(_unscale(z.to(dtype=vae_dtype), vae.config), return_dict=False)[0]
        if vae_dtype != torch.float32 and not bool(torch.isfinite(pixels).all()):
            pixels = _decode_fp32(vae, z)
            if notes is not None:
                notes.append(
                    f"image {i}: the VAE overflowed in {str(vae_dtype).removeprefix('torch.')} "
                    "(NaN or infinite pixels), so it was decoded again in float32; pass "
                    "vae_dtype='float32' to the policy to avoid the second decode"
                )
        images.extend(to_pil(pixels, bool(pipe.image_processor.config.do_normalize)))
    return images


def to_pil(pixels: torch.Tensor, denormalize: bool = True) -> list[Any]:
    """Convert decoded pixels (``B x C x H x W``) to PIL images, as diffusers' postprocess does.

    The arithmetic matches diffusers' (half-to-even rounding of float32 ``x * 255``) but runs on
    the pixels' device, so only bytes cross to the CPU.
    """
    from PIL import Image

    if denormalize:
        pixels = (pixels * 0.5 + 0.5).clamp(0, 1)
    rgb = (pixels.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if rgb.shape[-1] == 1:
        return [Image.fromarray(image.squeeze(-1), mode="L") for image in rgb]
    return [Image.fromarray(image) for image in rgb]


def run(
    pipe: Any,
    *,
    architecture: str,
    plan: ExecutionPlan,
    params: ResolvedParams,
    choice: SamplerChoice,
    scheduler_config: dict[str, Any],
    latent_channels: int,
    vae_factor: int,
    callback: StepCallback | None,
    show_progress: bool,
    init_image: Any = None,
    mask: Any = None,
    img2img: Any = None,
) -> RunOutput:
    """Generate ``params.images`` images; see the module docstring for the guarantees.

    With ``init_image``, ``img2img`` is the pipeline that starts from it: image-to-image, or
    inpainting when ``mask`` is given.
    """
    device = torch.device(getattr(pipe, "_execution_device", plan.device))
    seeds: Sequence[int] = params.seeds
    size = plan.max_batch if choice.sampler.batch_invariant else 1
    variation = (
        image_seeds(params.variation_seed, len(seeds)) if params.variation_seed is not None else ()
    )
    batches = [
        (list(seeds[i : i + size]), list(variation[i : i + size]))
        for i in range(0, len(seeds), size)
    ]
    noise_device = "cpu" if params.noise == "cpu" else device
    shape = (latent_channels, params.height // vae_factor, params.width // vae_factor)
    progress = _Progress(len(batches), callback, show_progress)
    notes: list[str] = []
    start = time.perf_counter()
    with torch.inference_mode():
        embeds = _encode(pipe, architecture, params, device)
        _sync(device)
        encoded = time.perf_counter()
        latents: list[torch.Tensor] = []
        bad_steps: list[tuple[tuple[int, ...], torch.Tensor | None]] = []
        steps_run = 0
        try:
            for batch, batch_variation in batches:
                progress.first_bad = progress.counter = None  # steps count per batch
                progress.batch_steps = 0
                pipe.scheduler = build_scheduler(choice, scheduler_config, noise_seed=batch[0])
                gens = generators(batch, noise_device)
                if init_image is not None:
                    assert params.strength is not None
                    img2img.scheduler = pipe.scheduler
                    if batch_variation:
                        _vary_added_noise(
                            pipe.scheduler, batch_variation, params.variation_strength, noise_device
                        )
                    masked = (
                        {
                            "mask_image": [mask] * len(batch),
                            "height": params.height,
                            "width": params.width,
                        }
                        if mask is not None
                        else {}
                    )
                    out = _denoise(
                        img2img,
                        embeds,
                        gens,
                        params,
                        progress,
                        image=[init_image] * len(batch),
                        strength=img2img_strength(params.steps, params.strength),
                        **masked,
                    )
                else:
                    if batch_variation:
                        noise = varied_noise(
                            batch,
                            batch_variation,
                            params.variation_strength,
                            shape,
                            noise_device=noise_device,
                            device=device,
                            dtype=plan.dtype,
                        )
                    else:
                        noise = initial_noise(gens, shape, device=device, dtype=plan.dtype)
                    out = _denoise(
                        pipe,
                        embeds,
                        gens,
                        params,
                        progress,
                        latents=noise,
                        height=params.height,
                        width=params.width,
                    )
                latents.append(out)
                bad_steps.append((tuple(batch), progress.first_bad))
                steps_run = progress.batch_steps
        finally:
            progress.close()
        for batch_seeds, first_bad in bad_steps:  # one read per batch, after all the work
            if first_bad is not None and int(first_bad) > 0:
                raise NumericalError(step=int(first_bad), dtype=params.dtype, seeds=batch_seeds)
        _sync(device)
        denoised = time.perf_counter()
        images = decode(pipe, torch.cat(latents), plan.vae_dtype, notes)
        if mask is not None and params.keep_unmasked:
            blur = params.mask_blur or 0
            images = [paste_unmasked(image, init_image, mask, blur) for image in images]
        _sync(device)
        decoded = time.perf_counter()
    timings = Timings(
        text_encoding=encoded - start,
        denoising=denoised - encoded,
        decoding=decoded - denoised,
        total=decoded - start,
    )
    return RunOutput(
        images=tuple(images), timings=timings, denoising_steps=steps_run, notes=tuple(notes)
    )

"""Generation parameters: validated once, at the edge, then trusted by the inner code.

Example:
    >>> import attrs, inferkit
    >>> base = inferkit.GenerationParams("a lighthouse at dusk", steps=20, seed=7)
    >>> attrs.evolve(base, seed=8).seed
    8

"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

from inferkit.errors import InvalidParameterError
from inferkit.lora import LoraInfo
from inferkit.schedulers import resolve_scheduler

__all__ = ["GenerationParams", "ResolvedParams"]

SEED_LIMIT = 2**64
"""Seeds are integers in ``[0, 2**64)``; image ``i`` uses ``(seed + i) % 2**64``."""

NoiseSource = Literal["cpu", "device"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prompt(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise InvalidParameterError(attribute.name, value, "must be a string")


def _positive_int(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise InvalidParameterError(attribute.name, value, "must be an integer >= 1")


def _optional_size(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise InvalidParameterError(
            attribute.name,
            value,
            "must be a positive multiple of the model's VAE factor (8 for Stable Diffusion), "
            "or None for the model's native size",
        )


def _check_seed(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not _is_int(value) or not 0 <= value < SEED_LIMIT:  # type: ignore[operator]
        raise InvalidParameterError(
            attribute.name, value, "must be an integer in [0, 2**64), or None to draw one"
        )


def _non_negative_float(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:  # type: ignore[arg-type, operator]
        raise InvalidParameterError(attribute.name, value, "must be a finite number >= 0")


def _unit_float(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0 <= value <= 1:  # type: ignore[operator]
        raise InvalidParameterError(attribute.name, value, "must be a number in [0, 1]")


def _non_negative_int(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise InvalidParameterError(attribute.name, value, "must be an integer >= 0")


def _check_bool(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidParameterError(attribute.name, value, "must be True or False")


def _check_scheduler(instance: GenerationParams, _: attrs.Attribute[Any], value: object) -> None:
    if instance.schedule is not None and not isinstance(instance.schedule, str):
        raise InvalidParameterError("schedule", instance.schedule, "must be a schedule name")
    if value is None:
        if instance.schedule is not None:
            raise InvalidParameterError(
                "schedule", instance.schedule, "needs a scheduler= to apply to"
            )
        return
    if not isinstance(value, str):
        raise InvalidParameterError("scheduler", value, "must be a sampler name such as 'euler'")
    resolve_scheduler(value, instance.schedule)


def _check_noise(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("cpu", "device"):
        raise InvalidParameterError(
            attribute.name,
            value,
            "must be 'cpu' (same noise on every device) or 'device' (drawn on the model's device)",
        )


@attrs.frozen
class GenerationParams:
    r"""What to generate: validated on construction, reusable, varied with ``attrs.evolve``.

    Attributes:
        prompt: the text to generate from.
        negative_prompt: what to steer away from ("" for none).
        steps: number of sampler steps, >= 1.
        seed: seed of the first image, an integer in ``[0, 2**64)``; ``None`` draws one and the
            result records it. Image ``i`` uses ``seed + i``.
        guidance: classifier-free guidance scale, >= 0; values <= 1 turn guidance off.
        guidance_rescale: rescale of the guided prediction (0 = off), in ``[0, 1]``.
        width: image width in pixels, a multiple of the model's VAE factor; ``None`` for native.
        height: image height in pixels, like ``width``.
        images: how many images to make, >= 1.
        scheduler: sampler name (``"euler_a"``, ``"DPM++ 2M Karras"``); ``None`` for the model's.
        schedule: sigma schedule (``"karras"``, ``"exponential"``, ``"beta"``), as in ComfyUI.
        noise: ``"cpu"`` draws initial noise on the CPU so that pixels do not depend on the
            device; ``"device"`` draws it on the model's device (faster, device-dependent).
        variation_seed: a second seed whose noise is blended into each image's noise, as
            AUTOMATIC1111's "variation seed" does (image ``i`` uses ``variation_seed + i``);
            ``None`` draws one when ``variation_strength`` is above 0.
        variation_strength: how far to move from the seed's noise towards the variation seed's,
            in ``[0, 1]``, by spherical interpolation: 0 is the seed's image, 1 the variation
            seed's, values between are nearby variations.
        init_image: start from this image instead of pure noise (image-to-image): a PIL image,
            a path, or an ``H x W x 3`` array. Without width and height, the image's own size
            rounded down to the VAE factor is used.
        strength: with ``init_image``, how much of it to repaint, in ``(0, 1]``: the run starts
            ``round(steps * strength)`` steps from the end of the schedule and runs those.
        mask: with ``init_image``, repaint only where the mask is white (inpainting): a PIL
            image (transparent pixels of an RGBA image count as white), a path, or an
            ``H x W`` array (``True``, ``255`` or ``1.0`` = repaint), the init image's size.
            Inpainting checkpoints (9-channel UNets) see the mask; other checkpoints keep the
            unmasked area by blending it back into the latents at every step.
        mask_blur: with ``mask``, blur the mask's edge by this many pixels when the unmasked
            pixels are put back, so the seam fades (AUTOMATIC1111's default, 4).
        keep_unmasked: with ``mask``, put the init image's own pixels back outside the mask
            (as AUTOMATIC1111 does); ``False`` keeps the decoded pixels there, which differ
            slightly from the input through the VAE.
        prompt_weighting: read AUTOMATIC1111's weighting syntax in the prompts (``(word:1.3)``,
            ``(word)``, ``[word]``, ``BREAK``); ``False`` encodes brackets as plain text. Write
            ``\\(`` for a literal bracket.

    Example:
        >>> import inferkit
        >>> p = inferkit.GenerationParams("a red circle", steps=10, seed=1, scheduler="Euler a")
        >>> p.steps, p.scheduler
        (10, 'Euler a')

    """

    prompt: str = attrs.field(validator=_check_prompt)
    negative_prompt: str = attrs.field(default="", validator=_check_prompt, kw_only=True)
    steps: int = attrs.field(default=30, validator=_positive_int, kw_only=True)
    seed: int | None = attrs.field(default=None, validator=_check_seed, kw_only=True)
    guidance: float = attrs.field(default=7.0, validator=_non_negative_float, kw_only=True)
    guidance_rescale: float = attrs.field(default=0.0, validator=_unit_float, kw_only=True)
    width: int | None = attrs.field(default=None, validator=_optional_size, kw_only=True)
    height: int | None = attrs.field(default=None, validator=_optional_size, kw_only=True)
    images: int = attrs.field(default=1, validator=_positive_int, kw_only=True)
    schedule: str | None = attrs.field(default=None, kw_only=True)
    scheduler: str | None = attrs.field(default=None, validator=_check_scheduler, kw_only=True)
    noise: NoiseSource = attrs.field(default="cpu", validator=_check_noise, kw_only=True)
    variation_seed: int | None = attrs.field(default=None, validator=_check_seed, kw_only=True)
    variation_strength: float = attrs.field(default=0.0, validator=_unit_float, kw_only=True)
    init_image: Any = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    strength: float = attrs.field(default=0.75, validator=_unit_float, kw_only=True)
    mask: Any = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    mask_blur: int = attrs.field(default=4, validator=_non_negative_int, kw_only=True)
    keep_unmasked: bool = attrs.field(default=True, validator=_check_bool, kw_only=True)
    prompt_weighting: bool = attrs.field(default=True, validator=_check_bool, kw_only=True)


@attrs.frozen(kw_only=True)
class ResolvedParams:
    """Parameters as they actually ran: every default filled in, every choice recorded.

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> r = model.infer("a red circle", steps=2, seed=3, progress=False).params
        >>> r.seeds, r.scheduler, r.device
        ((3,), 'pndm', 'cpu')

    """

    prompt: str
    negative_prompt: str
    steps: int
    seed: int
    seeds: tuple[int, ...]
    guidance: float
    guidance_rescale: float
    width: int
    height: int
    images: int
    scheduler: str
    scheduler_label: str
    noise: NoiseSource
    device: str
    dtype: str
    vae_dtype: str
    memory: tuple[str, ...]
    denoising_steps: int
    variation_seed: int | None = None
    variation_strength: float = 0.0
    prompt_tokens: int = 0
    prompt_weighting: bool = True
    negative_prompt_tokens: int = 0
    strength: float | None = None
    init_image_sha256: str | None = None
    mask_sha256: str | None = None
    loras: tuple[LoraInfo, ...] = ()
    mask_blur: int | None = None
    keep_unmasked: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return attrs.asdict(self)

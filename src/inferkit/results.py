"""Typed, immutable results: what was made and exactly how.

Example:
    >>> import inferkit
    >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
    >>> result = model.infer("a red circle", steps=2, seed=5, images=2, progress=False)
    >>> [im.seed for im in result.images], result.params.scheduler
    ([5, 6], 'pndm')

"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from inferkit.metadata import JSON_KEY, PARAMETERS_KEY, check_png_path, format_infotext
from inferkit.params import ResolvedParams
from inferkit.schedulers import SamplerChoice

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["GeneratedImage", "InferenceResult", "ModelInfo", "StepInfo", "Timings"]


@attrs.frozen(kw_only=True)
class StepInfo:
    """Progress of one denoising step, passed to a step callback.

    Attributes:
        step: steps completed so far in this call (1-based), across all images.
        total: steps the call will take in all.
        timestep: the sampler's timestep at this step.
        elapsed: seconds since denoising started.

    Example:
        >>> StepInfo(step=1, total=4, timestep=999.0, elapsed=0.1).fraction
        0.25

    """

    step: int
    total: int
    timestep: float
    elapsed: float

    @property
    def fraction(self) -> float:
        """How far along the call is, from 0 to 1."""
        return self.step / self.total if self.total else 1.0


@attrs.frozen(kw_only=True)
class Timings:
    """Wall-clock seconds spent in each stage of one call.

    Example:
        >>> Timings(text_encoding=0.1, denoising=1.0, decoding=0.2, total=1.4).total
        1.4

    """

    text_encoding: float
    denoising: float
    decoding: float
    total: float


@attrs.frozen(kw_only=True)
class LoadTimings:
    """Wall-clock seconds :meth:`Model.load` spent, from the call until the model is ready.

    Attributes:
        prepare: checking arguments, the policy's plan and finding the loader (in a fresh
            process this includes importing diffusers' modules on first use).
        read: the loader: reading the files and placing each tensor on the device in the
            target dtype.
        build: assembling the pipeline and its sampler (and a replacement VAE).
        place: the policy's placement and speed-ups (fusing, fp8, layouts); compilation
            itself happens on the first call.
        total: all of it, up to the device finishing its copies.

    Example:
        >>> LoadTimings(prepare=0.04, read=0.2, build=0.05, place=0.01, total=0.3).total
        0.3

    """

    prepare: float
    read: float
    build: float
    place: float
    total: float


@attrs.frozen(kw_only=True)
class ModelInfo:
    """What a loaded model is.

    Attributes:
        name: short human name (folder or repo name).
        source: the source as given to :meth:`Model.load`.
        loader: the loader that read it.
        architecture: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"``.
        variant: ``"base"`` or ``"inpainting"``.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        components: the component names (``unet``, ``vae``, ...).
        parameters: number of weights in all networks.
        device: where it runs.
        dtype: the networks' dtype.
        vae_dtype: the VAE's dtype.
        memory: memory strategies in use.
        default_scheduler: the sampler used when a call names none.
        hash: short sha256 of the weight and config files (10 hex digits, as AUTOMATIC1111).
        sha256: the full sha256 behind ``hash``.
        evidence: how the loader decided architecture and prediction type.
        decisions: how the policy decided device, dtype and memory.
        load_timings: how long :meth:`Model.load` took, by stage (``None`` for a model not
            built by it).

    Example:
        >>> import inferkit
        >>> info = inferkit.Model.load(inferkit.testing.tiny_model_path("sdxl")).info
        >>> info.architecture, "text_encoder_2" in info.components
        ('sdxl', True)

    """

    name: str
    source: str
    loader: str
    architecture: str
    variant: str
    prediction_type: str
    components: tuple[str, ...]
    parameters: int
    device: str
    dtype: str
    vae_dtype: str
    memory: tuple[str, ...]
    default_scheduler: str
    hash: str
    sha256: str
    evidence: tuple[str, ...]
    decisions: tuple[str, ...]
    load_timings: LoadTimings | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class GeneratedImage:
    """One generated image with its seed and the full record of how it was made.

    Attributes:
        image: the picture, a ``PIL.Image.Image``.
        seed: the seed that made this image.
        index: position in the call (0-based).
        metadata: the JSON record saved into PNG files.
        infotext: AUTOMATIC1111-style ``parameters`` text.

    Example:
        >>> import inferkit, tempfile, os
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> img = model.infer("a cat", steps=2, seed=1, progress=False).images[0]
        >>> img.image.size
        (64, 64)

    """

    image: Image.Image
    seed: int
    index: int
    metadata: Mapping[str, Any]
    infotext: str

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image as PNG with ``parameters`` (infotext) and ``inferkit`` (JSON) chunks.

        Returns:
            The path written.

        Raises:
            InvalidParameterError: the path does not end in ``.png``.

        """
        out = Path(path)
        check_png_path(out)
        out.write_bytes(self.png_bytes())
        return out

    def png_bytes(self) -> bytes:
        r"""Return the image as PNG bytes, with the same metadata chunks :meth:`save` writes.

        Example:
            >>> import inferkit
            >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> model.infer("a cat", steps=2, progress=False).images[0].png_bytes()[:4]
            b'\x89PNG'

        """
        import io

        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(PARAMETERS_KEY, self.infotext)
        info.add_text(JSON_KEY, json.dumps(self.metadata, sort_keys=True))
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()


@attrs.frozen(kw_only=True)
class InferenceResult:
    """Everything one :meth:`Model.infer` call made and decided.

    Attributes:
        images: the images, in seed order.
        params: the parameters as they ran (defaults filled, scheduler, device, dtype).
        timings: seconds per stage.
        model: what model made them.
        warnings: things the user should know (ignored arguments, fallbacks taken).

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> result = model.infer("a cat", steps=2, seed=1, progress=False)
        >>> result.params.seed, len(result.images)
        (1, 1)

    """

    images: tuple[GeneratedImage, ...]
    params: ResolvedParams
    timings: Timings
    model: ModelInfo
    warnings: tuple[str, ...] = ()

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seed of each image."""
        return tuple(im.seed for im in self.images)

    def grid(self, cols: int | None = None, *, gap: int = 0, background: str = "white") -> Any:
        """Lay the images out on one sheet, left to right, then top to bottom.

        Args:
            cols: images per row; default: the smallest count that makes the sheet about square
                (``ceil(sqrt(n))``).
            gap: pixels between images and around the sheet.
            background: colour of the gaps and of empty cells.

        Returns:
            A PIL image. It carries no generation metadata: each image keeps its own.

        Raises:
            InvalidParameterError: ``cols`` or ``gap`` is not a valid count.

        Example:
            >>> import inferkit
            >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> result = model.infer("a cat", steps=2, seed=1, images=3, progress=False)
            >>> result.grid(cols=2).size
            (128, 128)

        """
        from PIL import Image

        from inferkit.errors import InvalidParameterError

        count = len(self.images)
        if cols is None:
            cols = max(1, math.ceil(math.sqrt(count)))
        if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
            raise InvalidParameterError("cols", cols, "must be an integer >= 1 (or None)")
        if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
            raise InvalidParameterError("gap", gap, "must be an integer >= 0")
        cols = min(cols, count)
        rows = math.ceil(count / cols)
        width = max(im.image.width for im in self.images)
        height = max(im.image.height for im in self.images)
        sheet = Image.new(
            "RGB", (cols * width + (cols + 1) * gap, rows * height + (rows + 1) * gap), background
        )
        for i, generated in enumerate(self.images):
            row, col = divmod(i, cols)
            sheet.paste(
                generated.image.convert("RGB"),
                (gap + col * (width + gap), gap + row * (height + gap)),
            )
        return sheet


def image_record(
    *,
    params: ResolvedParams,
    choice: SamplerChoice,
    model: ModelInfo,
    seed: int,
    index: int,
    version: str,
) -> tuple[dict[str, Any], str]:
    """Build the JSON record and the infotext for one image."""
    record: dict[str, Any] = {
        "inferkit": version,
        "seed": seed,
        "index": index,
        "params": params.as_dict(),
        "model": {
            "name": model.name,
            "hash": model.hash,
            "sha256": model.sha256,
            "architecture": model.architecture,
            "prediction_type": model.prediction_type,
        },
    }
    fields = {
        "Steps": params.steps,
        "Sampler": choice.sampler.label,
        "Schedule type": choice.schedule_label,
        "CFG scale": params.guidance,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        **_variation_fields(params, index),
        **({"Denoising strength": params.strength} if params.strength is not None else {}),
        **({"Mask blur": params.mask_blur} if params.keep_unmasked else {}),
        **_lora_fields(params),
        "Model hash": model.hash,
        "Model": model.name,
        "Version": f"inferkit {version}",
    }
    text = format_infotext(
        prompt=params.prompt, negative_prompt=params.negative_prompt, fields=fields
    )
    return record, text


def _variation_fields(params: ResolvedParams, index: int) -> dict[str, Any]:
    """AUTOMATIC1111's infotext fields for a variation seed, when one was used."""
    if params.variation_seed is None:
        return {}
    from inferkit.seeds import nth_seed

    seed = nth_seed(params.variation_seed, index)
    return {"Variation seed": seed, "Variation seed strength": params.variation_strength}


def _lora_fields(params: ResolvedParams) -> dict[str, Any]:
    """AUTOMATIC1111's ``Lora hashes`` (name and short "addnet" hash), and the scales.

    AUTOMATIC1111 carries scales as ``<lora:name:0.8>`` tags in the prompt, which inferkit's
    prompts do not use, so they get a field of their own.
    """
    if not params.loras:
        return {}
    return {
        "Lora hashes": ", ".join(f"{x.name}: {x.short_hash}" for x in params.loras),
        "Lora scales": ", ".join(f"{x.name}: {x.scale:g}" for x in params.loras),
    }

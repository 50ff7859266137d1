r"""Generation metadata in PNG files: AUTOMATIC1111's ``parameters`` infotext and a JSON record.

:meth:`GeneratedImage.save` writes both chunks; :func:`read_metadata` reads either back, so it
also understands images made by AUTOMATIC1111, Forge and other tools that write infotext.

Example:
    >>> text = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 5"
    >>> meta = parse_infotext(text)
    >>> meta.prompt, meta.negative_prompt, meta.steps, meta.seed
    ('a cat', 'blurry', 20, 5)

"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from inferkit.errors import InvalidParameterError, ModelNotFoundError, UnsupportedModelError
from inferkit.seeds import nth_seed

__all__ = [
    "JSON_KEY",
    "PARAMETERS_KEY",
    "ImageMetadata",
    "format_infotext",
    "parse_infotext",
    "read_metadata",
]

PARAMETERS_KEY = "parameters"
"""PNG text key of the AUTOMATIC1111 infotext."""
JSON_KEY = "inferkit"
"""PNG text key of inferkit's full JSON record."""

# AUTOMATIC1111's own pattern for "Key: value, Key: "quoted, value", ..."
_PARAM = re.compile(r'\s*([\w ./-]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


@attrs.frozen(kw_only=True)
class ImageMetadata:
    r"""Generation settings read back from an image.

    Attributes:
        prompt: the prompt.
        negative_prompt: the negative prompt ("" if none).
        steps: sampler steps, if recorded.
        sampler: the sampler as written in infotext (``"DPM++ 2M Karras"``, schedule appended),
            or inferkit's canonical name (``"dpmpp_2m_karras"``) from its JSON record; both
            resolve with :func:`inferkit.resolve_scheduler`.
        seed: the image's own seed, if recorded.
        variation_seed: the image's own variation seed, if one was blended in.
        variation_strength: how strongly it was blended in (0 to 1), if recorded.
        guidance: CFG scale, if recorded.
        width: image width, if recorded.
        height: image height, if recorded.
        model_hash: short model hash, if recorded.
        model_name: model name, if recorded.
        extra: every other ``Key: value`` of the infotext, as strings.
        record: inferkit's full JSON record, or ``None`` for images from other tools.
        infotext: the raw infotext, or ``None``.

    Example:
        >>> meta = parse_infotext("a dog\nSteps: 5, Sampler: DPM++ 2M, Schedule type: Karras")
        >>> meta.sampler
        'DPM++ 2M Karras'

    """

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    seed: int | None = None
    variation_seed: int | None = None
    variation_strength: float | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    model_hash: str | None = None
    model_name: str | None = None
    extra: Mapping[str, str] = attrs.field(factory=dict)
    record: Mapping[str, Any] | None = None
    infotext: str | None = None


def _quote(value: str) -> str:
    if any(c in value for c in ',:"\n'):
        return json.dumps(value)
    return value


def format_infotext(
    *,
    prompt: str,
    negative_prompt: str,
    fields: Mapping[str, Any],
) -> str:
    """Format AUTOMATIC1111 infotext: prompt, ``Negative prompt:`` line, ``Key: value`` line.

    Example:
        >>> print(format_infotext(prompt="a cat", negative_prompt="",
        ...                       fields={"Steps": 20, "Seed": 1}))
        a cat
        Steps: 20, Seed: 1

    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return str(loaded)
    return value


def _maybe(convert: Any, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return convert(value)
    except ValueError:
        return None


def parse_infotext(text: str) -> ImageMetadata:
    r"""Parse AUTOMATIC1111 infotext into :class:`ImageMetadata`.

    The last line is the ``Key: value`` line when it holds ``Steps:`` (as A1111 writes it);
    lines before a ``Negative prompt:`` line are the prompt, lines after it the negative prompt.

    Example:
        >>> parse_infotext("a cat\nSteps: 20, Size: 512x768").height
        768

    """
    lines = text.strip("\n").split("\n")
    params_line = ""
    if lines and _PARAM.findall(lines[-1]) and "Steps:" in lines[-1]:
        params_line = lines.pop()
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    fields = {k.strip(): _unquote(v) for k, v in _PARAM.findall(params_line)}
    known = {
        "Steps",
        "Sampler",
        "Schedule type",
        "Seed",
        "Variation seed",
        "Variation seed strength",
        "CFG scale",
        "Size",
        "Model hash",
        "Model",
    }
    sampler = fields.get("Sampler")
    schedule = fields.get("Schedule type")
    if sampler and schedule and schedule.lower() not in {"automatic", "normal", "uniform"}:
        sampler = f"{sampler} {schedule}"
    size = _SIZE.match(fields.get("Size", ""))
    return ImageMetadata(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        steps=_maybe(int, fields.get("Steps")),
        sampler=sampler,
        seed=_maybe(int, fields.get("Seed")),
        variation_seed=_maybe(int, fields.get("Variation seed")),
        variation_strength=_maybe(float, fields.get("Variation seed strength")),
        guidance=_maybe(float, fields.get("CFG scale")),
        width=int(size.group(1)) if size else None,
        height=int(size.group(2)) if size else None,
        model_hash=fields.get("Model hash"),
        model_name=fields.get("Model"),
        extra={k: v for k, v in fields.items() if k not in known},
        infotext=text,
    )


def _from_record(record: Mapping[str, Any], infotext: str | None) -> ImageMetadata:
    params = record.get("params", {})
    model = record.get("model", {})
    return ImageMetadata(
        prompt=params.get("prompt", ""),
        negative_prompt=params.get("negative_prompt", ""),
        steps=params.get("steps"),
        sampler=params.get("scheduler"),
        seed=record.get("seed"),
        variation_seed=nth_seed(params["variation_seed"], record["index"])
        if isinstance(params.get("variation_seed"), int) and isinstance(record.get("index"), int)
        else None,
        variation_strength=params.get("variation_strength")
        if params.get("variation_seed") is not None
        else None,
        guidance=params.get("guidance"),
        width=params.get("width"),
        height=params.get("height"),
        model_hash=model.get("hash"),
        model_name=model.get("name"),
        record=record,
        infotext=infotext,
    )


def read_metadata(path: str | os.PathLike[str]) -> ImageMetadata:
    """Read generation metadata from an image written by inferkit, AUTOMATIC1111 or similar.

    inferkit's JSON record is preferred when present (it is complete and typed); otherwise the
    ``parameters`` infotext is parsed.

    Raises:
        ModelNotFoundError: the file does not exist.
        UnsupportedModelError: the file is not an image, or carries no generation metadata.

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> result = model.infer("a red circle", steps=2, seed=11, progress=False)
        >>> import tempfile, os
        >>> out = result.images[0].save(os.path.join(tempfile.mkdtemp(), "x.png"))
        >>> inferkit.read_metadata(out).seed
        11

    """
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise ModelNotFoundError(f"no image file at {str(file)!r}", source=str(file))
    try:
        with Image.open(file) as img:
            info = dict(img.info)
    except (UnidentifiedImageError, OSError) as e:
        raise UnsupportedModelError(
            f"{file} is not an image PIL can read: {e}", source=str(file)
        ) from e
    infotext = info.get(PARAMETERS_KEY)
    raw = info.get(JSON_KEY)
    if isinstance(raw, str):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UnsupportedModelError(
                f"{file}: the {JSON_KEY!r} chunk is not valid JSON ({e})", source=str(file)
            ) from e
        if isinstance(record, dict):
            return _from_record(record, infotext if isinstance(infotext, str) else None)
    if isinstance(infotext, str):
        return parse_infotext(infotext)
    raise UnsupportedModelError(
        f"{file} carries no generation metadata (no {PARAMETERS_KEY!r} or {JSON_KEY!r} text chunk)",
        source=str(file),
    )


def check_png_path(path: Path) -> None:
    """Refuse output paths whose suffix is not ``.png`` (metadata needs PNG text chunks)."""
    if path.suffix.lower() != ".png":
        raise InvalidParameterError(
            "path",
            str(path),
            "must end in .png (metadata is stored in PNG text chunks); "
            "use image.image.save() for other formats",
        )

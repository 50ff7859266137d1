"""Input images for image-to-image and inpainting: read them, check them, fit them to the grid.

Example:
    >>> import numpy as np
    >>> image = to_rgb(np.zeros((70, 90, 3), dtype=np.uint8))
    >>> fitted, note = fit(image, None, 8)
    >>> fitted.size, note is not None
    ((88, 64), True)

"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from inferkit.errors import InvalidParameterError

__all__ = [
    "MASK_THRESHOLD",
    "fingerprint",
    "fit",
    "fit_mask",
    "paste_unmasked",
    "to_mask",
    "to_rgb",
]

MASK_THRESHOLD = 128
"""Mask pixels at or above this grey level (of 255) are repainted; those below are kept."""


def _open(value: str | os.PathLike[str], name: str, mode: str | None) -> Any:
    """Read an image file, converted to ``mode`` (``None``: as stored, alpha included)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(value) as image:
            return image.convert(mode) if mode else image.copy()
    except FileNotFoundError as e:
        raise InvalidParameterError(name, str(value), "no such file") from e
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidParameterError(
            name, str(value), f"is not an image file PIL can read ({e})"
        ) from e


def to_rgb(value: Any) -> Any:
    """Return ``value`` (a PIL image, a path, or an ``H x W x 3`` array) as an RGB PIL image.

    Raises:
        InvalidParameterError: the value is none of those, or the file is not a readable image.

    """
    import numpy as np
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        return _open(value, "init_image", "RGB")
    if isinstance(value, np.ndarray):
        array = value
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        if array.ndim != 3 or array.shape[2] != 3:
            raise InvalidParameterError(
                "init_image", f"array of shape {value.shape}", "must be H x W x 3 (RGB)"
            )
        if array.dtype != np.uint8:
            if not np.isfinite(array).all():
                raise InvalidParameterError("init_image", "array", "holds NaN or infinite values")
            array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    raise InvalidParameterError(
        "init_image", type(value).__name__, "must be a PIL image, a path or an H x W x 3 array"
    )


def to_mask(value: Any) -> Any:
    """Return ``value`` as a black-and-white (mode ``"L"``) PIL image: white is repainted.

    ``value`` is a PIL image, a path, or an array (``H x W`` of booleans, of ``0..255``
    integers or of ``0..1`` floats, or ``H x W x 3``). An RGBA image with any transparency
    uses its alpha channel (transparent is repainted, as in ComfyUI and OpenAI's API); a fully
    opaque one its grey levels. Grey levels of at least :data:`MASK_THRESHOLD` become white,
    the rest black, so that a mask means the same whatever its anti-aliasing.

    Raises:
        InvalidParameterError: the value is none of those, or it marks nothing to repaint.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((8, 8), dtype=bool); m[2:4, 2:4] = True
        >>> sorted(to_mask(m).getdata())[-4:], to_mask(m).mode
        ([255, 255, 255, 255], 'L')

    """
    import numpy as np
    from PIL import Image

    if isinstance(value, (str, os.PathLike)):
        value = _open(value, "mask", None)
    if isinstance(value, Image.Image):
        alpha = None
        if value.mode in ("RGBA", "LA") or "transparency" in value.info:
            alpha = value.convert("RGBA").getchannel("A")
            if alpha.getextrema() == (255, 255):
                alpha = None  # fully opaque: the paint says where, as in a greyscale mask
        if alpha is not None:
            grey = np.asarray(alpha.point(lambda a: 255 - a), dtype=np.uint8)
        else:
            grey = np.asarray(value.convert("L"), dtype=np.uint8)
    elif isinstance(value, np.ndarray):
        array = value
        if array.ndim == 3 and array.shape[2] in (1, 3):
            array = array.max(axis=2)
        if array.ndim != 2:
            raise InvalidParameterError(
                "mask", f"array of shape {value.shape}", "must be H x W (or H x W x 3)"
            )
        if array.dtype == np.bool_:
            grey = array.astype(np.uint8) * 255
        elif np.issubdtype(array.dtype, np.integer):
            grey = np.clip(array, 0, 255).astype(np.uint8)
        else:
            if not np.isfinite(array).all():
                raise InvalidParameterError("mask", "array", "holds NaN or infinite values")
            grey = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    else:
        raise InvalidParameterError(
            "mask",
            type(value).__name__,
            "must be a PIL image, a path or an H x W array (white or True = repaint)",
        )
    binary = np.where(grey >= MASK_THRESHOLD, 255, 0).astype(np.uint8)
    if not binary.any():
        raise InvalidParameterError(
            "mask", "an all-black mask", "marks nothing to repaint; paint white where to repaint"
        )
    return Image.fromarray(np.ascontiguousarray(binary), mode="L")


def fit_mask(mask: Any, original: tuple[int, int], size: tuple[int, int]) -> Any:
    """Resize ``mask`` as its init image of size ``original`` was resized to ``size``.

    Raises:
        InvalidParameterError: the mask's size is not the init image's.

    """
    from PIL import Image

    if mask.size != original:
        raise InvalidParameterError(
            "mask",
            f"{mask.width}x{mask.height}",
            f"must have the init image's size, {original[0]}x{original[1]}",
        )
    if mask.size == size:
        return mask
    return mask.resize(size, Image.Resampling.NEAREST)


def paste_unmasked(generated: Any, init: Any, mask: Any, blur: int) -> Any:
    """Return ``generated`` with ``init``'s pixels put back where ``mask`` is black.

    The mask is blurred with a Gaussian of radius ``blur`` so the seam fades both ways, as
    AUTOMATIC1111's "mask blur" does: near the mask's edge, inside and outside, pixels are a
    mix of the two. Pixels about ``3 * blur`` or more outside the mask are ``init``'s exactly;
    with ``blur=0`` the mask's edge is hard.

    Example:
        >>> from PIL import Image
        >>> init, gen = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
        >>> mask = Image.new("L", (8, 8), 0); mask.paste(255, (0, 0, 4, 8))
        >>> out = paste_unmasked(gen, init, mask, 0)
        >>> out.getpixel((0, 0)), out.getpixel((7, 0))
        ((0, 0, 255), (255, 0, 0))

    """
    from PIL import Image, ImageFilter

    alpha = mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask
    return Image.composite(generated.convert("RGB"), init, alpha)


def fit(image: Any, size: tuple[int, int] | None, factor: int) -> tuple[Any, str | None]:
    """Resize ``image`` to ``size`` (width, height), or to its own size rounded down to ``factor``.

    Returns the image and a note when it was resized.
    """
    from PIL import Image

    why = "to the requested width and height"
    if size is None:
        size = (
            max(factor, image.width // factor * factor),
            max(factor, image.height // factor * factor),
        )
        why = f"sizes must be multiples of {factor}"
    if size == image.size:
        return image, None
    note = (
        f"init_image was resized from {image.width}x{image.height} to {size[0]}x{size[1]} ({why})"
    )
    return image.resize(size, Image.Resampling.LANCZOS), note


def fingerprint(image: Any) -> str:
    """Return the sha256 of an RGB image's size and pixels (recorded with its results)."""
    digest = hashlib.sha256(f"{image.width}x{image.height}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()

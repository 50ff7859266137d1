"""Input images for image-to-image: read them, check them, fit them to the model's grid.

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

__all__ = ["fingerprint", "fit", "to_rgb"]


def to_rgb(value: Any) -> Any:
    """Return ``value`` (a PIL image, a path, or an ``H x W x 3`` array) as an RGB PIL image.

    Raises:
        InvalidParameterError: the value is none of those, or the file is not a readable image.

    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        try:
            with Image.open(value) as image:
                return image.convert("RGB")
        except FileNotFoundError as e:
            raise InvalidParameterError("init_image", str(value), "no such file") from e
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidParameterError(
                "init_image", str(value), f"is not an image file PIL can read ({e})"
            ) from e
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

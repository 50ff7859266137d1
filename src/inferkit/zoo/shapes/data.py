"""The shapes world: coloured circles, squares and triangles on a plain background.

Example:
    >>> import numpy as np
    >>> image = draw("red", "circle", "white", np.random.default_rng(0))
    >>> image.size
    (64, 64)
    >>> caption("red", "circle", "white")
    'a red circle on a white background'

"""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["BACKGROUNDS", "COLORS", "SHAPES", "SIZE", "caption", "combinations", "draw"]

SIZE = 64
"""Image side in pixels."""
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 135, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (20, 20, 20)}
_SUPERSAMPLE = 4


def caption(color: str, shape: str, background: str) -> str:
    """Return the prompt that describes one image."""
    return f"a {color} {shape} on a {background} background"


def combinations() -> list[tuple[str, str, str]]:
    """Return every (colour, shape, background) triple, in a fixed order."""
    return list(itertools.product(COLORS, SHAPES, BACKGROUNDS))


def draw(color: str, shape: str, background: str, rng: np.random.Generator) -> Image.Image:
    """Draw one anti-aliased image with a random size and position from ``rng``."""
    s = _SUPERSAMPLE
    big = SIZE * s
    image = Image.new("RGB", (big, big), BACKGROUNDS[background])
    pen = ImageDraw.Draw(image)
    side = int(rng.integers(26, 42)) * s
    x0 = int(rng.integers(4 * s, big - side - 4 * s + 1))
    y0 = int(rng.integers(4 * s, big - side - 4 * s + 1))
    box = (x0, y0, x0 + side, y0 + side)
    fill = COLORS[color]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)

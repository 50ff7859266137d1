"""Judge a generated shapes image: say which colour and which shape it shows.

The checker finds the pixels that differ from the background (read from the image border),
names their mean colour by the nearest palette colour, and names the shape by how much of its
bounding box it fills: a square fills all of it, a circle about pi/4, a triangle about half.

Example:
    >>> import numpy as np
    >>> from inferkit.zoo.shapes.data import draw
    >>> judge(draw("blue", "triangle", "black", np.random.default_rng(1)))
    Judgement(color='blue', shape='triangle', background='black', fill=0.5...)

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
from PIL import Image

from inferkit.zoo.shapes.data import BACKGROUNDS, COLORS

__all__ = ["Judgement", "Score", "judge", "parse_prompt", "score"]


@attrs.frozen
class Judgement:
    """What the checker sees in an image (``None`` where it cannot tell)."""

    color: str | None
    shape: str | None
    background: str | None
    fill: float
    area: float

    def __repr__(self) -> str:
        """Show the judgement with the fill ratio rounded."""
        return (
            f"Judgement(color={self.color!r}, shape={self.shape!r}, "
            f"background={self.background!r}, fill={self.fill:.3f}, area={self.area:.3f})"
        )


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dist = [float(np.linalg.norm(rgb - np.array(palette[n], dtype=float))) for n in names]
    return names[int(np.argmin(dist))]


def judge(image: Image.Image) -> Judgement:
    """Return the colour, shape and background an image shows."""
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    distance = np.linalg.norm(pixels - bg_rgb, axis=2)
    mask = distance > 60
    area = float(mask.mean())
    if area < 0.03:
        return Judgement(None, None, background, 0.0, area)
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    cols = np.flatnonzero(mask.sum(axis=0) >= 2)
    if rows.size == 0 or cols.size == 0:
        return Judgement(None, None, background, 0.0, area)
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fill = float(box.mean())
    core = distance > 120
    color_pixels = pixels[core if core.sum() > 20 else mask]
    color = _nearest(np.median(color_pixels, axis=0), COLORS)
    if fill > 0.9:
        shape = "square"
    elif fill > 0.66:
        shape = "circle"
    else:
        shape = "triangle"
    return Judgement(color, shape, background, fill, area)


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """Return the (colour, shape, background) that a prompt names.

    Example:
        >>> parse_prompt("a green square on a black background")
        ('green', 'square', 'black')

    """
    words = prompt.lower().replace(",", " ").split()
    color = next(w for w in words if w in COLORS)
    shape = next(w for w in words if w in ("circle", "square", "triangle"))
    background = next(w for w in words if w in BACKGROUNDS)
    return color, shape, background


@attrs.frozen
class Score:
    """How often a model's images match their prompts."""

    color: float
    shape: float
    total: int
    misses: tuple[str, ...]


def score(
    model: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    scheduler: str | None = None,
    steps: int = 20,
    guidance: float = 7.0,
) -> Score:
    """Generate every prompt with every seed and return the fraction judged right.

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load("inferkit:shapes")
        >>> s = score(model, ["a red circle on a white background"], [1, 2], steps=20)
        >>> s.total
        2

    """
    colors = shapes = 0
    misses: list[str] = []
    for prompt in prompts:
        want_color, want_shape, _ = parse_prompt(prompt)
        for seed in seeds:
            image = model.infer(
                prompt,
                seed=seed,
                scheduler=scheduler,
                steps=steps,
                guidance=guidance,
                progress=False,
            ).images[0]
            seen = judge(image.image)
            colors += seen.color == want_color
            shapes += seen.shape == want_shape
            if seen.color != want_color or seen.shape != want_shape:
                misses.append(f"{prompt!r} seed {seed}: saw {seen.color} {seen.shape}")
    total = len(prompts) * len(seeds)
    return Score(color=colors / total, shape=shapes / total, total=total, misses=tuple(misses))

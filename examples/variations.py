"""Variations of one image: the same seed, moved further and further towards a second seed.

    python examples/variations.py [OUTPUT_DIR]

Uses the shipped shapes model. Strength 0 is the seed's own image and 1 the variation seed's;
small strengths give nearby variations of the same picture. Writes each image (with its
metadata) and variations-grid.png, a contact sheet of the row, made with ``result.grid``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs

import inferkit

STRENGTHS = (0.0, 0.1, 0.2, 0.35, 0.6, 1.0)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with inferkit.Model.load("inferkit:shapes") as model:
        results = [
            model.infer(
                "a yellow triangle on a black background",
                steps=20,
                seed=4,
                variation_seed=5,
                variation_strength=strength,
                progress=False,
            )
            for strength in STRENGTHS
        ]
    for strength, result in zip(STRENGTHS, results, strict=True):
        path = result.images[0].save(out_dir / f"variation-{strength:.2f}.png")
        print(f"strength {strength:.2f}: wrote {path}")
    row = attrs.evolve(results[0], images=tuple(r.images[0] for r in results))
    sheet = row.grid(cols=len(STRENGTHS), gap=4)
    sheet.save(out_dir / "variations-grid.png")
    print(f"wrote {out_dir / 'variations-grid.png'} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

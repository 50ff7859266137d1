"""Image-to-image: repaint a red circle blue, at several strengths.

    python examples/image_to_image.py [OUTPUT_DIR]

Uses the shipped shapes model. It draws a red circle, then asks for a blue one starting from
it: strength is how much of the image is repainted (round(steps * strength) steps run). Writes
every image (with its metadata) and img2img-grid.png, a contact sheet of the row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs

import inferkit
from inferkit.zoo.shapes.checker import judge

STRENGTHS = (0.1, 0.3, 0.5, 0.8)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with inferkit.Model.load("inferkit:shapes") as model:
        start = model.infer("a red circle on a white background", steps=20, seed=3, progress=False)
        start.images[0].save(out_dir / "start.png")
        results = [
            model.infer(
                "a blue circle on a white background",
                init_image=start.images[0].image,
                strength=strength,
                steps=20,
                seed=3,
                progress=False,
            )
            for strength in STRENGTHS
        ]
    for strength, result in zip(STRENGTHS, results, strict=True):
        seen = judge(result.images[0].image)
        path = result.images[0].save(out_dir / f"blue-{strength:.1f}.png")
        print(
            f"strength {strength:.1f}: {result.params.denoising_steps} steps, "
            f"{seen.color} {seen.shape}, wrote {path}"
        )
    row = attrs.evolve(start, images=(start.images[0], *(r.images[0] for r in results)))
    row.grid(gap=4, cols=len(row.images)).save(out_dir / "img2img-grid.png")
    print(f"wrote {out_dir / 'img2img-grid.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

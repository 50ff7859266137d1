"""Inpainting: repaint only the masked part of an image.

    python examples/inpainting.py [OUTPUT_DIR]

Uses the shipped shapes model, an ordinary (4-channel) checkpoint, so the unmasked area is
kept by latent blending and then pasted back. It draws a red circle, masks a box around it, and
repaints the box in three colours. Writes every image (with its metadata), the mask, and
inpaint-grid.png: the start, the mask (inputs/mask.png), then the three results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import inferkit
from inferkit.zoo.shapes.checker import judge

COLORS = ("blue", "green", "purple")


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with inferkit.Model.load("inferkit:shapes") as model:
        start = model.infer("a red circle on a white background", steps=20, seed=3, progress=False)
        start.images[0].save(out_dir / "start.png")
        mask = np.zeros((64, 64), dtype=bool)
        mask[16:56, 0:48] = True  # white = repaint: a box around the circle
        mask_path = out_dir / "inputs" / "mask.png"
        mask_path.parent.mkdir(exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        results = [
            model.infer(
                f"a {color} circle on a white background",
                init_image=start.images[0].image,
                mask=mask_path,
                steps=20,
                seed=3,
                progress=False,
            )
            for color in COLORS
        ]
    untouched = ~mask
    untouched[8:64, 0:56] = False  # leave a margin for the mask's blur
    before = np.asarray(start.images[0].image)
    for color, result in zip(COLORS, results, strict=True):
        image = result.images[0]
        same = np.array_equal(np.asarray(image.image)[untouched], before[untouched])
        path = image.save(out_dir / f"inpainted-{color}.png")
        print(
            f"{color}: judged {judge(image.image).color}, pixels outside the mask unchanged: "
            f"{same}, wrote {path}"
        )
    row = [start.images[0].image, Image.open(mask_path).convert("RGB")]
    row += [r.images[0].image for r in results]
    sheet = Image.new("RGB", (len(row) * 68 - 4, 64), "white")
    for i, picture in enumerate(row):
        sheet.paste(picture, (i * 68, 0))
    sheet.save(out_dir / "inpaint-grid.png")
    print(f"wrote {out_dir / 'inpaint-grid.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

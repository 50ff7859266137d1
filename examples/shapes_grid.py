"""Draw a grid of the packaged shapes model's images: prompts down, samplers across.

    python examples/shapes_grid.py [OUTPUT_DIR]

Writes shapes-grid.png, the picture in the docs (a contact sheet, so it carries no metadata).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

import inferkit

PROMPTS = [
    "a red circle on a white background",
    "a blue square on a black background",
    "a yellow triangle on a white background",
    "a purple circle on a black background",
    "a green triangle on a black background",
    "an orange square on a white background",
]
SAMPLERS = ["euler", "euler_a", "heun", "dpmpp_2m_karras", "dpmpp_sde", "ddim", "unipc"]
STEPS = {"euler_a": 30, "heun": 15, "dpmpp_sde": 20}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = inferkit.Model.load("inferkit:shapes")
    cell, label = model.native_size, 130
    grid = Image.new("RGB", (label + cell * len(SAMPLERS), 16 + cell * len(PROMPTS)), "white")
    pen = ImageDraw.Draw(grid)
    for col, sampler in enumerate(SAMPLERS):
        pen.text((label + col * cell + 2, 2), sampler[:11], fill="black")
        for row, prompt in enumerate(PROMPTS):
            result = model.infer(
                prompt, seed=7, scheduler=sampler, steps=STEPS.get(sampler, 20), progress=False
            )
            grid.paste(result.images[0].image, (label + col * cell, 16 + row * cell))
    for row, prompt in enumerate(PROMPTS):
        words = prompt.split()
        pen.text((2, 16 + row * cell + 20), " ".join(words[1:3]), fill="black")
        pen.text((2, 16 + row * cell + 34), f"on {words[5]}", fill="black")
    grid.save(out_dir / "shapes-grid.png")
    print(f"wrote {out_dir / 'shapes-grid.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

"""LoRA adapters: apply the shipped "night" adapter to the shapes model at several scales.

    python examples/lora.py [OUTPUT_DIR]

The adapter (`inferkit:shapes-night`, trained by `python -m inferkit.zoo.shapes.train_lora`)
paints every background black, even when the prompt asks for white, and keeps the colour and
shape. For three prompts, it writes the image at scales 0, 0.5 and 1 (with metadata) and
lora-grid.png, a contact sheet of the three rows, then checks that the base model's weights are
back, bit for bit.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from PIL import Image

import inferkit
from inferkit.zoo.shapes.checker import judge

PROMPTS = (
    "a red circle on a white background",
    "a yellow triangle on a white background",
    "a green circle on a white background",
)
SCALES = (0.0, 0.5, 1.0)


def weights_hash(model: inferkit.Model) -> str:
    digest = hashlib.sha256()
    for tensor in model.pipeline.unet.state_dict().values():
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet = Image.new("RGB", (len(SCALES) * 68 - 4, len(PROMPTS) * 68 - 4), "white")
    with inferkit.Model.load("inferkit:shapes") as model:
        before = weights_hash(model)
        for row, prompt in enumerate(PROMPTS):
            for col, scale in enumerate(SCALES):
                night = model.with_lora("inferkit:shapes-night", scale=scale)
                image = night.infer(prompt, steps=20, seed=3, progress=False).images[0]
                seen = judge(image.image)
                path = image.save(out_dir / f"night-{row}-{scale:.1f}.png")
                print(
                    f"{prompt!r} at scale {scale:.1f}: {seen.color} {seen.shape} on "
                    f"{seen.background}, wrote {path}"
                )
                sheet.paste(image.image, (col * 68, row * 68))
        print(f"base weights restored exactly: {weights_hash(model) == before}")
    sheet.save(out_dir / "lora-grid.png")
    print(f"wrote {out_dir / 'lora-grid.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

"""Long prompts: words after the 75th token still reach the model.

    python examples/long_prompts.py [OUTPUT_DIR]

Uses the shipped shapes model with a prompt of 82 tokens: 75 full stops, then "a blue square
on a black background". diffusers' own pipeline (the model's escape hatch) cuts the prompt at 77
tokens and never sees the caption; inferkit encodes it in two 75-token chunks. Writes
long-prompt-grid.png: for three seeds, diffusers' image then inferkit's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

import inferkit
from inferkit.zoo.shapes.checker import judge

PROMPT = ". " * 75 + "a blue square on a black background"
SEEDS = (1, 2, 3)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    row = []
    with inferkit.Model.load("inferkit:shapes") as model:
        for seed in SEEDS:
            cut = model.pipeline(
                PROMPT,
                num_inference_steps=20,
                guidance_scale=7.0,
                generator=[torch.Generator().manual_seed(seed)],
            ).images[0]
            result = model.infer(PROMPT, steps=20, seed=seed, progress=False)
            image = result.images[0]
            image.save(out_dir / f"long-{seed}.png")
            seen, lost = judge(image.image), judge(cut)
            print(
                f"seed {seed}: {result.params.prompt_tokens} tokens; inferkit drew a {seen.color} "
                f"{seen.shape} on {seen.background}, truncated: {lost.color} {lost.shape} on "
                f"{lost.background}"
            )
            row += [cut, image.image]
    sheet = Image.new("RGB", (len(row) * 68 - 4, 64), "white")
    for i, picture in enumerate(row):
        sheet.paste(picture, (i * 68, 0))
    sheet.save(out_dir / "long-prompt-grid.png")
    print(f"wrote {out_dir / 'long-prompt-grid.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

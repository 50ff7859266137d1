"""Generate two images with a tiny model written on the fly: no network, no GPU.

    python examples/quickstart.py [OUTPUT_DIR]

The tiny model has random weights, so the pictures are noise; swap in your own model folder
(or a cached hub repo id) for real images.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import inferkit
import inferkit.testing


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = inferkit.testing.write_tiny_model(Path(tmp) / "tiny-sd1", "sd1")
        with inferkit.Model.load(model_dir) as model:
            print(model, "parameters:", f"{model.info.parameters:,}")
            result = model.infer(
                "a lighthouse at dusk",
                negative_prompt="blurry",
                steps=20,
                seed=7,
                guidance=6.0,
                scheduler="DPM++ 2M Karras",
                images=2,
            )
    for image in result.images:
        path = image.save(out_dir / f"lighthouse-{image.seed}.png")
        print(f"wrote {path} (seed {image.seed})")
    t = result.timings
    print(f"{result.params.scheduler_label}: {t.total:.2f} s total, {t.denoising:.2f} s denoising")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

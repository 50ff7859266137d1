"""Read the settings back out of a generated PNG and make the identical image again.

python examples/reproduce_from_png.py [OUTPUT_DIR]
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
        model = inferkit.Model.load(inferkit.testing.write_tiny_model(Path(tmp) / "m", "sdxl"))
        first = model.infer(
            "a red circle on a white background",
            steps=8,
            seed=1234,
            scheduler="Euler a",
            progress=False,
        )
        path = first.images[0].save(out_dir / "original.png")

        meta = inferkit.read_metadata(path)
        print(
            "read back:",
            meta.prompt,
            "| seed",
            meta.seed,
            "|",
            meta.sampler,
            "| hash",
            meta.model_hash,
        )
        assert meta.model_hash == model.info.hash, "a different model made this image"
        again = model.infer(
            meta.prompt,
            negative_prompt=meta.negative_prompt,
            seed=meta.seed,
            steps=meta.steps,
            guidance=meta.guidance,
            scheduler=meta.sampler,
            width=meta.width,
            height=meta.height,
            progress=False,
        )
        model.close()
    same = again.images[0].image.tobytes() == first.images[0].image.tobytes()
    print("identical pixels:", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

"""The same picture on the default path and on the fast path, and what the fast path did.

    python examples/fast_policy.py [OUTPUT_DIR]

Runs the shipped shapes model with the default policy and with ``FastPolicy``. On a CUDA GPU,
the fast path compiles the networks (about a minute the first time, seconds once the cache
is warm) and replays them from CUDA graphs. On a CPU it uses the layout changes only
(``compile="none"``), so the example finishes in seconds. It prints each policy's decisions,
the time per image, and how far apart the two images are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

import inferkit

PROMPT = "a blue triangle on a yellow background"


def generate(model: inferkit.Model) -> tuple[inferkit.InferenceResult, float]:
    model.infer(PROMPT, steps=20, seed=3, progress=False)  # warm-up (compiles on a GPU)
    start = time.perf_counter()
    result = model.infer(PROMPT, steps=20, seed=3, progress=False)
    return result, time.perf_counter() - start


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fast_policy = inferkit.FastPolicy(compile="full" if torch.cuda.is_available() else "none")
    images = {}
    for label, policy in (("default", None), ("fast", fast_policy)):
        with inferkit.Model.load("inferkit:shapes", policy=policy) as model:
            result, seconds = generate(model)
        print(f"{label}: {seconds * 1000:.0f} ms per image")
        for decision in result.model.decisions:
            print(f"    {decision}")
        path = result.images[0].save(out_dir / f"triangle-{label}.png")
        images[label] = np.asarray(result.images[0].image, dtype=np.float64)
        print(f"    wrote {path}")
    diff = np.abs(images["default"] - images["fast"])
    print(f"mean pixel difference {diff.mean():.3f} of 255 (largest {diff.max():.0f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))

"""inferkit vs a plain diffusers pipeline on the same model, sampler and noise (CPU).

    python benchmarks/cpu_overhead.py [--arch sd1] [--steps 20] [--rounds 7]

Alternates the two in one process and prints median seconds per image and their ratio, plus
load times. Writes benchmarks/results/cpu-<date>.json. The model is a tiny one from
inferkit.testing, which makes fixed per-call costs look as large as they can.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import inferkit
import inferkit.testing


def plain_diffusers(path: Path, arch: str):  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="sd1", choices=inferkit.testing.ARCHITECTURES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    path = inferkit.testing.write_tiny_model(Path(tempfile.mkdtemp()) / args.arch, args.arch)
    load_ik, load_df = [], []
    for _ in range(3):
        t = time.perf_counter()
        model = inferkit.Model.load(path)
        load_ik.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipe = plain_diffusers(path, args.arch)
        load_df.append(time.perf_counter() - t)

    choice = inferkit.resolve_scheduler("euler")
    pipe.scheduler = choice.sampler.scheduler_type().from_config(pipe.scheduler.config)
    prompt = "a red circle on a white background"
    ik, df = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        model.infer(prompt, steps=args.steps, seed=1, scheduler="euler", progress=False)
        ik.append(time.perf_counter() - t)
        gen = torch.Generator().manual_seed(1)
        latents = torch.randn((1, 4, 8, 8), generator=gen)
        t = time.perf_counter()
        pipe(
            prompt,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            latents=latents,
            generator=gen,
        )
        df.append(time.perf_counter() - t)

    row = {
        "arch": args.arch,
        "steps": args.steps,
        "image_s_inferkit": statistics.median(ik),
        "image_s_diffusers": statistics.median(df),
        "image_ratio": statistics.median(ik) / statistics.median(df),
        "load_s_inferkit": statistics.median(load_ik),
        "load_s_diffusers": statistics.median(load_df),
        "load_ratio": statistics.median(load_ik) / statistics.median(load_df),
    }
    for key, value in row.items():
        print(f"{key:<20}{value:.4f}" if isinstance(value, float) else f"{key:<20}{value}")
    out = Path(__file__).parent / "results" / f"cpu-{dt.date.today().isoformat()}.json"
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "inferkit": inferkit.__version__,
        "results": [row],
    }
    if out.exists():
        previous = json.loads(out.read_text())
        record["results"] = [r for r in previous["results"] if r["arch"] != args.arch] + [row]
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

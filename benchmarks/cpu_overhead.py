"""inferkit vs a plain diffusers pipeline on the same model, sampler and noise (CPU).

Run through ``python benchmarks/run.py cpu``. Alternates the two in one process and returns
median seconds per image and their ratio, plus load times. The model is a tiny one from
inferkit.testing, which makes inferkit's fixed per-call costs look as large as they can.
"""

from __future__ import annotations

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


def measure(arch: str = "sd1", steps: int = 20, rounds: int = 7) -> dict[str, float | str]:
    """Median seconds per image and per load, inferkit vs diffusers, alternating in-process."""
    path = inferkit.testing.write_tiny_model(Path(tempfile.mkdtemp()) / arch, arch)
    load_ik, load_df = [], []
    for _ in range(3):
        t = time.perf_counter()
        model = inferkit.Model.load(path)
        load_ik.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipe = plain_diffusers(path, arch)
        load_df.append(time.perf_counter() - t)

    choice = inferkit.resolve_scheduler("euler")
    pipe.scheduler = choice.sampler.scheduler_type().from_config(pipe.scheduler.config)
    prompt = "a red circle on a white background"
    ik, df = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        model.infer(prompt, steps=steps, seed=1, scheduler="euler", progress=False)
        ik.append(time.perf_counter() - t)
        gen = torch.Generator().manual_seed(1)
        latents = torch.randn((1, 4, 8, 8), generator=gen)
        t = time.perf_counter()
        pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=7.0,
            latents=latents,
            generator=gen,
        )
        df.append(time.perf_counter() - t)
    return {
        "arch": arch,
        "steps": steps,
        "image_s_inferkit": statistics.median(ik),
        "image_s_diffusers": statistics.median(df),
        "image_ratio": statistics.median(ik) / statistics.median(df),
        "load_s_inferkit": statistics.median(load_ik),
        "load_s_diffusers": statistics.median(load_df),
        "load_ratio": statistics.median(load_ik) / statistics.median(load_df),
    }

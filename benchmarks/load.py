"""Load time and peak memory: inferkit's loaders vs diffusers' from_pretrained.

Run through ``python benchmarks/run.py cpu``.

Builds a full-size SD 1.5 architecture (published config, random weights: loading speed and
memory do not depend on the values) in float16, saves it both as a diffusers folder and as an
original-layout single file, then loads each in a fresh subprocess, alternating, and prints
median seconds to load, seconds until every weight has been read ("ready": mapped files are
paged in lazily), and the peak resident memory each load added over the process's baseline.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
which, path, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

import diffusers, transformers, inferkit  # imports are not part of a load
from diffusers import StableDiffusionPipeline
base = status("VmRSS")
start = time.perf_counter()
if which == "inferkit-file":
    model = inferkit.Model.load(path, dtype=torch.float16, **extra)
elif which == "inferkit-folder":
    model = inferkit.Model.load(path, dtype=torch.float16)
else:
    model = StableDiffusionPipeline.from_pretrained(
        path, torch_dtype=torch.float16, local_files_only=True, safety_checker=None)
seconds = time.perf_counter() - start
# "Ready" means every weight is in memory: mapped files are paged in lazily, so touch them all.
pipe = model.pipeline if hasattr(model, "pipeline") and not callable(model) else model
for name in ("unet", "vae", "text_encoder"):
    for tensor in getattr(pipe, name).state_dict().values():
        tensor.max()
ready = time.perf_counter() - start
peak = status("VmHWM")  # this process's own high-water mark (ru_maxrss survives exec)
print(json.dumps({"seconds": seconds, "ready_seconds": ready, "added_peak_bytes": peak - base}))
"""


def build(root: Path) -> tuple[Path, Path]:
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import inferkit.testing

    folder = root / "sd15"
    if not (folder / "model_index.json").exists():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                hidden_act="quick_gelu",
            )
        )
        tiny = inferkit.testing.tiny_model_path("sd1")
        tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler(skip_prk_steps=True),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).to(torch.float16)
        pipe.save_pretrained(folder, safe_serialization=True)
    single = root / "sd15.safetensors"
    if not single.exists():
        inferkit.testing.write_single_file(folder, single, dtype=torch.float16)
    return folder, single


def run(which: str, path: Path, extra: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, which, str(path), json.dumps(extra)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(repeat: int = 3, workdir: str | None = None) -> dict[str, float | str]:
    """Median load and ready seconds and peak added memory, each loader in fresh processes."""
    root = Path(workdir or os.path.join(tempfile.gettempdir(), "inferkit-bench"))
    root.mkdir(parents=True, exist_ok=True)
    folder, single = build(root)
    extra = {"tokenizer": str(folder / "tokenizer")}
    runs: dict[str, list[dict[str, float]]] = {
        "inferkit-file": [],
        "inferkit-folder": [],
        "diffusers-folder": [],
    }
    for _ in range(repeat):
        runs["inferkit-file"].append(run("inferkit-file", single, extra))
        runs["inferkit-folder"].append(run("inferkit-folder", folder, {}))
        runs["diffusers-folder"].append(run("diffusers-folder", folder, {}))
    size = single.stat().st_size
    row: dict[str, float | str] = {
        "model": "SD 1.5 architecture, random weights, float16",
        "checkpoint_bytes": size,
    }
    for name, results in runs.items():
        row[f"{name}_s"] = statistics.median(r["seconds"] for r in results)
        row[f"{name}_ready_s"] = statistics.median(r["ready_seconds"] for r in results)
        row[f"{name}_peak_added_bytes"] = statistics.median(r["added_peak_bytes"] for r in results)
    base = float(row["diffusers-folder_s"])
    row["file_vs_diffusers_time"] = float(row["inferkit-file_s"]) / base
    row["folder_vs_diffusers_time"] = float(row["inferkit-folder_s"]) / base
    ready = float(row["diffusers-folder_ready_s"])
    row["file_vs_diffusers_ready"] = float(row["inferkit-file_ready_s"]) / ready
    row["folder_vs_diffusers_ready"] = float(row["inferkit-folder_ready_s"]) / ready
    row["file_peak_vs_checkpoint"] = float(row["inferkit-file_peak_added_bytes"]) / size
    row["folder_peak_vs_checkpoint"] = float(row["inferkit-folder_peak_added_bytes"]) / size
    return row

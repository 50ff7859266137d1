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
    """Write (once) full-size SD 1.5 as a diffusers folder and a single file under ``root``."""
    import gpu_suite

    folder, single = root / "sd15", root / "sd15.safetensors"
    if (folder / "model_index.json").exists() and single.exists():
        return folder, single
    return gpu_suite.build("sd15", root, tiny=False, device="cpu")


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

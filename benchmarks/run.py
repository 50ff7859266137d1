"""The benchmarks' one entry point: run a suite, print a table, write JSON (and a plot).

    python benchmarks/run.py cpu                    # CPU suite (this machine)
    python benchmarks/run.py gpu [SUITE ARGS...]    # GPU suite, see benchmarks/gpu_suite.py
    python benchmarks/run.py plot RESULTS.json [--out docs/images/benchmarks-h200.png]

Results go to ``benchmarks/results/<device>-<date>.json``: ``cpu-...`` for the CPU suite, the
card's short name (``h200-...``) for the GPU suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def _table(rows: list[dict[str, Any]], keys: list[str]) -> None:
    widths = [max(len(k), 10) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for r in rows:
        cells = []
        for k, w in zip(keys, widths, strict=True):
            v = r.get(k, "")
            cells.append((f"{v:.4g}" if isinstance(v, float) else str(v)).ljust(w))
        print(" | ".join(cells))


def cpu(args: argparse.Namespace) -> Path:
    """Overhead per image (tiny sd1 and sdxl) and full-size SD 1.5 load times, vs diffusers."""
    import cpu_overhead
    import load
    import torch

    import inferkit

    overhead = [cpu_overhead.measure(arch, args.steps, args.rounds) for arch in ("sd1", "sdxl")]
    loads = load.measure(args.repeat)
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "inferkit": inferkit.__version__,
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/run.py cpu",
        "results": overhead,
        "load": loads,
    }
    print("\nTime per image, inferkit / diffusers (same model, sampler, noise; alternating):")
    _table(overhead, ["arch", "steps", "image_s_inferkit", "image_s_diffusers", "image_ratio"])
    print("\nLoad, full-size SD 1.5 fp16, each in a fresh process (median of runs):")
    _table(
        [
            {
                "loader": name,
                "load_s": loads[f"{name}_s"],
                "ready_s": loads[f"{name}_ready_s"],
                "peak_added_GB": float(loads[f"{name}_peak_added_bytes"]) / 1e9,
            }
            for name in ("inferkit-file", "inferkit-folder", "diffusers-folder")
        ],
        ["loader", "load_s", "ready_s", "peak_added_GB"],
    )
    out = RESULTS / f"cpu-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out


def gpu(argv: list[str]) -> Path:
    """Run the GPU suite and file its JSON under the card's name and today's date."""
    import tempfile

    import gpu_suite

    if "--out" not in argv:  # the suite's own running log; the results file is written below
        argv = [*argv, "--out", tempfile.mkdtemp(prefix="inferkit-gpu-")]
    sys.argv = ["gpu_suite.py", *argv]
    gpu_suite.main()
    data = gpu_suite.RESULTS
    name = str(data["env"].get("device", "cpu"))
    short = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-") or "gpu"
    if data["env"].get("tiny"):
        short = f"tiny-{short}"  # a check of the script, never mistaken for a card's results
    out = RESULTS / f"{short}-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return out


# --- plot ---------------------------------------------------------------------------------------

_COLORS = {
    "diffusers": (150, 150, 150),
    "reference": (200, 170, 90),
    "default": (90, 140, 200),
    "fast": (40, 90, 170),
    "target": (200, 60, 60),
}


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a GPU results file.

    In a combined file, baselines (diffusers, inferkit default) come from the first run that
    measured them, so that both baselines of an architecture ran under the same conditions;
    fast paths come from the latest run.
    """
    if "rows" in data:
        return list(data["rows"])
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for key in sorted(k for k in data if k.startswith("run")):
        for r in data[key]["rows"]:
            baseline = not r["path"].startswith("inferkit fast")
            if not (baseline and (r["arch"], r["path"]) in merged):
                merged[(r["arch"], r["path"])] = r
    return list(merged.values())


def plot(path: Path, out: Path) -> None:
    """End-to-end seconds per image (30 steps) for each path, one panel per architecture."""
    from PIL import Image, ImageDraw

    data = json.loads(path.read_text())
    rows = _rows(data)
    panels = []
    # The reference numbers (same card type, torch 2.11) and its targets.
    reference = {
        "sd15": ("best standard recipe (issue)", 0.226),
        "sdxl": ("best standard recipe (issue)", 1.34),
    }
    targets = {"sd15": 0.15, "sdxl": 0.90}
    for arch, title in (("sd15", "SD 1.5, 512x512"), ("sdxl", "SDXL, 1024x1024")):
        bars = []
        for r in rows:
            if r["arch"] != arch or "e2e_s" not in r:
                continue
            kind = (
                "diffusers"
                if r["path"].startswith("diffusers")
                else ("default" if r["path"] == "inferkit default" else "fast")
            )
            bars.append((r["path"], float(r["e2e_s"]), kind))
        bars.append((reference[arch][0], reference[arch][1], "reference"))
        bars.sort(key=lambda b: -b[1])
        panels.append((title, bars, targets[arch]))
    width, bar_h, label_w = 900, 26, 300
    height = sum(60 + bar_h * len(b) for _, b, _ in panels) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = 10
    device = data.get("device") or data.get("env", {}).get("device", "")
    draw.text((10, y), f"End to end, 30 steps, batch 1, guidance on - {device}", fill="black")
    y += 24
    for title, bars, target in panels:
        draw.text((10, y), title, fill="black")
        y += 20
        longest = max(b[1] for b in bars)
        scale = (width - label_w - 80) / longest
        top = y
        for label, seconds, kind in bars:
            draw.text((10, y + 7), label, fill="black")
            draw.rectangle(
                (label_w, y + 4, label_w + seconds * scale, y + bar_h - 4), fill=_COLORS[kind]
            )
            draw.text((label_w + seconds * scale + 6, y + 7), f"{seconds:.3f} s", fill="black")
            y += bar_h
        x = label_w + target * scale
        draw.line((x, top, x, y), fill=_COLORS["target"], width=2)
        draw.text((x + 4, top - 14), f"target {target} s", fill=_COLORS["target"])
        y += 40
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="suite", required=True)
    p_cpu = sub.add_parser("cpu", help="CPU suite")
    p_cpu.add_argument("--steps", type=int, default=20)
    p_cpu.add_argument("--rounds", type=int, default=7)
    p_cpu.add_argument("--repeat", type=int, default=3)
    sub.add_parser("gpu", help="GPU suite; further arguments go to gpu_suite.py")
    p_plot = sub.add_parser("plot", help="plot a GPU results file")
    p_plot.add_argument("results", type=Path)
    p_plot.add_argument("--out", type=Path, default=Path("docs/images/benchmarks-gpu.png"))
    args, rest = parser.parse_known_args()
    if args.suite == "cpu":
        cpu(args)
    elif args.suite == "gpu":
        gpu(rest)
    else:
        plot(args.results, args.out)


if __name__ == "__main__":
    main()

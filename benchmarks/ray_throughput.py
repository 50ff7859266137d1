"""Batch throughput: run_local vs inferkit.ray.generate with 1 and 2 workers, on this machine.

    python benchmarks/ray_throughput.py [--rows 24] [--steps 20]

Generates ``--rows`` prompts of the shapes model (64x64) into a fresh folder per configuration
and prints images per second. Every time is end to end as a user sees it: model loading and
Ray actor start-up included, Ray's own start-up (``ray.init``, once) excluded. The local loop
runs in this process with torch's default thread count and with 1 thread; each Ray actor gets
1 CPU (1 torch thread). The load average is printed: other work on the machine skews numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]


def rows(count: int) -> list[dict[str, object]]:
    return [
        {
            "prompt": f"a {COLOURS[i % 4]} {SHAPES[i % 3]} on a white background",
            "seed": 1000 + i,
        }
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    import torch

    import inferkit
    import inferkit.ray
    from inferkit.batch import run_local

    work = tempfile.mkdtemp(prefix="inferkit-ray-bench-")
    data = rows(args.rows)
    defaults = {"steps": args.steps}
    results: list[tuple[str, float, float]] = []

    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        summary = run_local(
            "inferkit:shapes", data, f"{work}/local-{threads}", defaults=defaults,
            progress=False, device="cpu",
        )  # fmt: skip
        results.append((f"run_local, 1 process, {threads} torch thread(s)", summary.seconds,
                        summary.images_per_second))  # fmt: skip
    torch.set_num_threads(default_threads)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            summary = inferkit.ray.generate(
                data,
                "inferkit:shapes",
                out=f"{work}/ray-{workers}",
                defaults=defaults,
                workers=workers,
                cpus_per_worker=1,
                progress=False,
            )
            assert summary.done == args.rows, summary
            results.append((f"Ray, {workers} worker(s) x 1 CPU", summary.seconds,
                            summary.images_per_second))  # fmt: skip
    finally:
        ray.shutdown()

    load = os.getloadavg()
    print(
        f"\n{args.rows} images, shapes model 64x64, {args.steps} steps, "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, ray {ray.__version__}, inferkit {inferkit.__version__}; "
        f"load average at the end {load[0]:.2f}"
    )
    print("| configuration | seconds | images/s |")
    print("| --- | --- | --- |")
    for name, seconds, rate in results:
        print(f"| {name} | {seconds:.1f} | {rate:.2f} |")


if __name__ == "__main__":
    main()

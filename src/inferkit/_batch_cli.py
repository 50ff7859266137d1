"""The ``inferkit batch`` command: a prompt file in, images and a Parquet manifest out.

``cli.py`` adds it with :func:`add_batch_command` and dispatches ``"batch"`` to
:func:`run_batch`.

Example:
    $ inferkit batch inferkit:shapes prompts.csv --out runs/1 --steps 20
    $ inferkit batch ./my-model prompts.jsonl --out s3://bucket/run --ray-address auto

"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from inferkit._cli_args import size_arg

__all__ = ["add_batch_command", "run_batch"]


def add_batch_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to the ``inferkit`` parser's subparsers; return it.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="inferkit")
        >>> _ = add_batch_command(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["batch", "m", "p.csv", "--out", "o"]).backend
        'auto'

    """
    batch = subparsers.add_parser(
        "batch",
        help="generate every row of a CSV or JSONL prompt file into a folder (resumable)",
        description="Generate one image per row of PROMPTS (CSV with a header row, or JSON Lines; "
        "columns: id, prompt, negative_prompt, seed, steps, guidance, width, height, scheduler) "
        "into OUT/images/<id>.png with a Parquet manifest in OUT/manifest/. Running it again "
        "skips rows already done and retries failed ones.",
    )
    batch.add_argument(
        "model", help="diffusers folder, .safetensors file, cached hub repo id, or inferkit:NAME"
    )
    batch.add_argument("prompts", help="a .csv (header row with 'prompt') or .jsonl file")
    batch.add_argument("--out", required=True, help="output folder or fsspec URL (s3://...)")
    batch.add_argument(
        "--backend",
        choices=["auto", "local", "ray"],
        default="auto",
        help="local: a plain loop on this machine; ray: Ray Data actors; auto (default): Ray "
        "when --ray-address is given or Ray is installed, else local",
    )
    batch.add_argument(
        "--ray-address", default=None, help="Ray cluster to use ('auto', 'ray://head:10001')"
    )
    batch.add_argument("--workers", type=int, default=None, help="Ray actors (default: auto)")
    batch.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per Ray actor (default: 1 if the cluster has GPUs, else 0)",
    )
    batch.add_argument("--batch-size", type=int, default=None, help="rows per Ray batch")
    batch.add_argument("--steps", type=int, default=None, help="for rows without steps")
    batch.add_argument("--guidance", type=float, default=None, help="for rows without guidance")
    batch.add_argument("--scheduler", default=None, help="for rows without a scheduler")
    batch.add_argument("--negative", default=None, help="for rows without a negative prompt")
    batch.add_argument(
        "--size", type=size_arg, default=None, help="WIDTHxHEIGHT or N, for rows without a size"
    )
    batch.add_argument("--device", default="auto")
    batch.add_argument("--dtype", default="auto")
    batch.add_argument(
        "--flush-every", type=int, default=32, help="rows per manifest part (default 32)"
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    return batch  # type: ignore[no-any-return]


def _use_ray(args: argparse.Namespace) -> bool:
    if args.backend == "local":
        return False
    if args.backend == "ray" or args.ray_address is not None:
        return True
    return importlib.util.find_spec("ray") is not None


def run_batch(args: argparse.Namespace) -> int:
    """Run ``inferkit batch``; return 0, or 1 when some rows failed (they are in the manifest).

    Errors that stop the whole run (a missing prompt file, a bad column, a missing extra) are
    raised as inferkit errors, which ``inferkit``'s ``main`` prints on one line.
    """
    from inferkit.batch import read_prompts, run_local

    if args.backend == "local" and args.ray_address is not None:
        from inferkit.errors import InvalidParameterError

        raise InvalidParameterError(
            "--ray-address", args.ray_address, "needs --backend ray or auto, not local"
        )
    rows = read_prompts(args.prompts)
    width, height = args.size if args.size else (None, None)
    defaults = {
        k: v
        for k, v in {
            "steps": args.steps,
            "guidance": args.guidance,
            "scheduler": args.scheduler,
            "negative_prompt": args.negative,
            "width": width,
            "height": height,
        }.items()
        if v is not None
    }
    progress = not args.quiet and sys.stderr.isatty()
    load = {"dtype": args.dtype, "device": args.device}
    if _use_ray(args):
        import inferkit.ray

        summary = inferkit.ray.generate(
            rows,
            args.model,
            out=args.out,
            defaults=defaults,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            batch_size=args.batch_size,
            address=args.ray_address,
            flush_every=args.flush_every,
            progress=progress,
            # "auto" is left to generate(), which loads on the CPU where no GPU is assigned
            **{k: v for k, v in load.items() if v != "auto"},
        )
        _shutdown_ray()
    else:
        summary = run_local(
            args.model,
            rows,
            args.out,
            defaults=defaults,
            progress=progress,
            flush_every=args.flush_every,
            **load,
        )
    print(summary)
    if summary.failed:
        print(
            f"inferkit: {summary.failed} {'row' if summary.failed == 1 else 'rows'} failed "
            f"(first: {summary.failed_ids[0]}); the manifest's error column says why; run the "
            "command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _shutdown_ray() -> None:
    """Stop the Ray connection (and a local instance this command started)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()

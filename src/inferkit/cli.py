"""The ``inferkit`` command: ``generate``, ``inspect``, ``schedulers``, ``batch``.

Bad input exits with status 2 and one line on stderr (``inferkit: error: ...``), never a
traceback.

Example:
    $ inferkit generate ./my-model "a lighthouse at dusk" --steps 20 --seed 7 -o out.png
    $ inferkit inspect ./my-model
    $ inferkit schedulers
    $ inferkit batch ./my-model prompts.csv --out runs/1

"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from inferkit._batch_cli import add_batch_command, run_batch
from inferkit._cli_args import size_arg
from inferkit.errors import InferkitError, InvalidParameterError
from inferkit.metadata import check_png_path

if TYPE_CHECKING:
    from inferkit.results import LoadTimings

__all__ = ["main"]


def _lora(text: str) -> tuple[str, float]:
    """Split ``PATH[:SCALE]``; a path with colons (a drive letter) keeps them without a scale."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, 1.0


def _parser() -> argparse.ArgumentParser:
    from inferkit import __version__

    parser = argparse.ArgumentParser(
        prog="inferkit", description="Run Stable Diffusion family models offline."
    )
    parser.add_argument("--version", action="version", version=f"inferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument(
        "model", help="diffusers folder, .safetensors file, cached hub repo id, or inferkit:NAME"
    )
    gen.add_argument("prompt")
    gen.add_argument(
        "-o", "--output", default="inferkit.png", help="PNG path (default %(default)s)"
    )
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--steps", type=int, default=30)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=7.0)
    gen.add_argument("--scheduler", default=None, help="sampler name, see `inferkit schedulers`")
    gen.add_argument("--schedule", default=None, help="sigma schedule: karras, exponential, beta")
    gen.add_argument(
        "--size", type=size_arg, default=None, help="WIDTHxHEIGHT or N (default native)"
    )
    gen.add_argument("--images", type=int, default=1)
    gen.add_argument("--variation-seed", type=int, default=None, help="second seed to blend in")
    gen.add_argument(
        "--variation-strength", type=float, default=0.0, help="0 (seed) to 1 (variation seed)"
    )
    gen.add_argument("--grid", default=None, help="also write a contact sheet of the images here")
    gen.add_argument("--init-image", default=None, help="start from this image (image-to-image)")
    gen.add_argument(
        "--strength", type=float, default=0.75, help="with --init-image: how much to repaint"
    )
    gen.add_argument(
        "--mask", default=None, help="with --init-image: repaint only where this image is white"
    )
    gen.add_argument(
        "--mask-blur", type=int, default=4, help="with --mask: blur of the seam, in pixels"
    )
    gen.add_argument(
        "--lora",
        action="append",
        type=_lora,
        default=[],
        metavar="PATH[:SCALE]",
        help="apply a LoRA file (scale 1 unless given); repeat to stack several",
    )
    gen.add_argument("--device", default="auto")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--vae", default=None, help="replacement VAE (file or diffusers folder)")
    gen.add_argument("--tokenizer", default=None, help="tokenizer folder (single files)")
    gen.add_argument("--tokenizer-2", default=None, help="second tokenizer folder (SDXL files)")
    gen.add_argument("--prediction", choices=["v", "epsilon"], default=None)

    ins = sub.add_parser(
        "inspect",
        help="show what a model is and how it was detected (single files: header only)",
    )
    ins.add_argument("model")
    ins.add_argument("--json", action="store_true", help="print JSON")

    sch = sub.add_parser("schedulers", help="list the samplers and their schedules")
    sch.add_argument("--json", action="store_true", help="print JSON")
    add_batch_command(sub)
    return parser


def _outputs(output: str, count: int, option: str = "--output") -> list[Path]:
    path = Path(output)
    check_png_path(path)
    if not path.parent.is_dir():
        raise InvalidParameterError(option, output, f"its folder {path.parent} does not exist")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def _generate(args: argparse.Namespace) -> int:
    from inferkit.model import Model
    from inferkit.params import GenerationParams

    width, height = args.size if args.size else (None, None)
    params = GenerationParams(
        args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        width=width,
        height=height,
        images=args.images,
        scheduler=args.scheduler,
        schedule=args.schedule,
        variation_seed=args.variation_seed,
        variation_strength=args.variation_strength,
        init_image=args.init_image,
        strength=args.strength,
        mask=args.mask,
        mask_blur=args.mask_blur,
    )
    paths = _outputs(args.output, params.images)
    if args.grid is not None:
        _outputs(args.grid, 1, "--grid")  # check the sheet's path before any work
    options = {
        k: v
        for k, v in {
            "vae": args.vae,
            "tokenizer": args.tokenizer,
            "tokenizer_2": args.tokenizer_2,
            "prediction": args.prediction,
        }.items()
        if v is not None
    }
    with Model.load(args.model, device=args.device, dtype=args.dtype, **options) as model:
        styled = model
        for path, scale in args.lora:
            styled = styled.with_lora(path, scale)
        result = styled.infer(params, progress=not args.quiet and sys.stderr.isatty())
    for image, path in zip(result.images, paths, strict=True):
        image.save(path)
        print(f"{path}  seed={image.seed}")
    if args.grid is not None:
        result.grid().save(args.grid)
        print(f"{args.grid}  contact sheet of {len(result.images)} images")
    for note in result.warnings:
        print(f"inferkit: warning: {note}", file=sys.stderr)
    t = result.timings
    print(
        f"{result.params.scheduler_label}, {result.params.steps} steps, "
        f"{result.params.width}x{result.params.height}, {result.params.device} "
        f"{result.params.dtype}: {t.total:.2f} s (denoise {t.denoising:.2f} s)",
        file=sys.stderr,
    )
    return 0


def _inspect_file(args: argparse.Namespace) -> int:
    from inferkit.loaders.single_file import inspect_file

    found = inspect_file(args.model)
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
        return 0
    _print_report(
        [
            ("family", found.family),
            ("variant", found.variant),
            ("prediction", found.prediction_type),
            ("stored dtype", found.stored_dtype),
            ("EMA weights", "yes" if found.has_ema else "no"),
            ("native size", found.resolution),
        ],
        found.evidence,
    )
    return 0


def _print_report(rows: list[tuple[str, object]], evidence: tuple[str, ...]) -> None:
    for key, value in rows:
        print(f"{key:<13}{value}")
    print("evidence:")
    for line in evidence:
        print(f"  - {line}")


def _inspect(args: argparse.Namespace) -> int:
    from inferkit.model import Model

    if Path(args.model).suffix.lower() == ".safetensors":
        return _inspect_file(args)
    with Model.load(args.model) as model:
        info = model.info
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
        return 0
    _print_report(
        [
            ("name", info.name),
            ("architecture", info.architecture),
            ("prediction", info.prediction_type),
            ("components", ", ".join(info.components)),
            ("parameters", f"{info.parameters:,}"),
            ("dtype", info.dtype),
            ("scheduler", info.default_scheduler),
            ("hash", info.hash),
            ("loader", info.loader),
            *(
                [("load time", _load_time(info.load_timings))]
                if info.load_timings is not None
                else []
            ),
        ],
        info.evidence,
    )
    return 0


def _load_time(t: LoadTimings) -> str:
    stages = f"prepare {t.prepare:.2f} s, read {t.read:.2f} s, build {t.build:.2f} s"
    return f"{t.total:.2f} s ({stages}, place {t.place:.2f} s)"


def _schedulers(args: argparse.Namespace) -> int:
    from inferkit.schedulers import samplers

    specs = samplers()
    if args.json:
        data = [
            {
                "name": s.name,
                "label": s.label,
                "class": s.scheduler_class,
                "aliases": list(s.aliases),
                "schedules": list(s.schedules()),
            }
            for s in specs
        ]
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'name':<14}{'A1111 label':<14}{'schedules':<34}aliases")
    for s in specs:
        print(f"{s.name:<14}{s.label:<14}{', '.join(s.schedules()):<34}{', '.join(s.aliases)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Example:
        >>> main(["schedulers", "--json"]) == 0  # doctest: +ELLIPSIS
        [...
        True

    """
    args = _parser().parse_args(argv)
    handlers = {
        "generate": _generate,
        "inspect": _inspect,
        "schedulers": _schedulers,
        "batch": run_batch,
    }
    try:
        return handlers[args.command](args)
    except InferkitError as e:
        print(f"inferkit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an output folder that is not writable
        print(f"inferkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inferkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

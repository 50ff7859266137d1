"""GPU suite: diffusers eager vs inferkit default vs inferkit fast, full-size SD 1.5 and SDXL.

    python benchmarks/gpu_suite.py --out DIR [--budget 500] [--archs sd15,sdxl]
    python benchmarks/gpu_suite.py --tiny --device cpu --out DIR      # the script's own check

Builds each architecture from its published configuration with random weights (timings do not
depend on weight values; real checkpoints cannot be fetched here), writes it as a diffusers
folder and an original-layout single file, and measures in one process on one card:

* load to ready from the page cache (inferkit folder and single file, diffusers from_pretrained);
* end-to-end seconds for 30 guided steps at the native size, text encoding, VAE decode and PIL
  conversion included (median of several runs after a warm-up);
* the UNet step (one batch-2 forward, CUDA events) and the TFLOP/s it achieves;
* first-call time (compilation, graph recording) and peak GPU memory;
* closeness: each path's UNet step against an fp32 reference (relative L2 error), and its
  image against inferkit's default path (mean absolute pixel difference, 0-255);
* a second process that finds the persistent compile cache warm (first-call time).

Stages run in priority order and are skipped when the time budget would be exceeded; every
result is appended to DIR/gpu_suite.json as soon as it is measured, and a table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

PROMPT = "a lighthouse at dusk, detailed oil painting"
STEPS = 30

# Multiply-adds of one UNet forward per image at the native size, counted with
# torch.utils.flop_counter on these configs (FLOP = 2 x MACs); filled in at run time.
RESULTS: dict[str, Any] = {"rows": [], "notes": [], "env": {}}
OUT = Path(".")
START = time.perf_counter()
BUDGET = 500.0
PROFILE = False


def log(*parts: Any) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s]", *parts, flush=True)


def save() -> None:
    (OUT / "gpu_suite.json").write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def left() -> float:
    return BUDGET - (time.perf_counter() - START)


def stage(name: str, estimate: float) -> bool:
    """Whether there is time for a stage that takes about ``estimate`` seconds."""
    if left() < estimate:
        log(f"SKIP {name}: needs ~{estimate:.0f}s, {left():.0f}s left")
        RESULTS["notes"].append(f"skipped {name}: needs ~{estimate:.0f}s, {left():.0f}s left")
        save()
        return False
    log(f"START {name}")
    return True


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- architectures ------------------------------------------------------------------------------


def configs(arch: str, tiny: bool) -> dict[str, Any]:
    if tiny:
        return {"tiny": True}
    # The published configurations; both families share the VAE and the CLIP-L text encoder.
    vae = dict(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
    )
    clip_l = dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
    )
    if arch == "sd15":
        return {
            "unet": dict(
                sample_size=64,
                cross_attention_dim=768,
                attention_head_dim=8,
                block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2,
            ),
            "vae": {**vae, "sample_size": 512},
            "text": [clip_l],
        }
    return {
        "unet": dict(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        "vae": {**vae, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text": [
            {**clip_l, "projection_dim": 768},
            dict(
                vocab_size=49408,
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                hidden_act="gelu",
                projection_dim=1280,
            ),
        ],
    }


def build(arch: str, root: Path, tiny: bool, device: str) -> tuple[Path, Path]:
    """Write the architecture as a diffusers folder and a single file; return both paths."""
    import inferkit.testing

    folder = root / arch
    single = root / f"{arch}.safetensors"
    family = "sdxl" if arch == "sdxl" else "sd1"
    if tiny:
        inferkit.testing.write_tiny_model(folder, family)
        inferkit.testing.write_single_file(folder, single, dtype=torch.float16)
        return folder, single
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    cfg = configs(arch, tiny)
    tok_dir = inferkit.testing.tiny_model_path("sd1") / "tokenizer"
    torch.manual_seed(0)
    build_device = device if device.startswith("cuda") else "cpu"
    with torch.device(build_device):
        unet = UNet2DConditionModel(**cfg["unet"]).to(torch.float16)
        vae = AutoencoderKL(**cfg["vae"]).to(torch.float16)
        texts = []
        for i, t in enumerate(cfg["text"]):
            cls = CLIPTextModelWithProjection if (arch == "sdxl" and i == 1) else CLIPTextModel
            texts.append(cls(CLIPTextConfig(**t)).to(torch.float16))
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    if arch == "sdxl":
        pipe: Any = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=texts[0],
            text_encoder_2=texts[1],
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=texts[0],
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.to("cpu")
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe, unet, vae, texts
    free()
    inferkit.testing.write_single_file(folder, single, dtype=torch.float16)
    return folder, single


# --- measurements -------------------------------------------------------------------------------


def diffusers_pipe(arch: str, folder: Path, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True}
    if arch != "sdxl":
        kwargs["safety_checker"] = None
    pipe = cls.from_pretrained(folder, **kwargs).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_inputs(pipe: Any, arch: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """One guided step's UNet inputs, made as the pipeline makes them (inference tensors, the
    Euler sampler's float32 timestep), so compiled paths reuse the graph of the e2e runs."""
    with torch.inference_mode():
        return _unet_inputs(pipe, arch, device, dtype, seed)


def _unet_inputs(pipe: Any, arch: str, device: str, dtype: torch.dtype, seed: int) -> Any:
    unet = pipe.unet
    cfg = unet.config
    g = torch.Generator().manual_seed(seed)
    size = int(cfg.sample_size)
    sample = torch.randn((2, int(cfg.in_channels), size, size), generator=g).to(device, dtype)
    ehs = torch.randn((2, 77, int(cfg.cross_attention_dim)), generator=g).to(device, dtype)
    t = torch.tensor(500.0, device=device)
    kwargs: dict[str, Any] = {"encoder_hidden_states": ehs, "return_dict": False}
    if arch == "sdxl":
        width = int(cfg.projection_class_embeddings_input_dim) - 6 * int(
            cfg.addition_time_embed_dim
        )
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn((2, width), generator=g).to(device, dtype),
            "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * 2).to(
                device, dtype
            ),
        }
    return (sample, t), kwargs


def unet_step_seconds(pipe: Any, arch: str, device: str, dtype: torch.dtype, reps: int) -> float:
    args, kwargs = unet_inputs(pipe, arch, device, dtype)
    with torch.inference_mode():
        for _ in range(3):
            pipe.unet(*args, **kwargs)
        sync(device)
        times = []
        for _ in range(reps):
            if device.startswith("cuda"):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                pipe.unet(*args, **kwargs)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1000)
            else:
                t0 = time.perf_counter()
                pipe.unet(*args, **kwargs)
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unet_output(pipe: Any, arch: str, device: str, dtype: torch.dtype) -> torch.Tensor:
    args, kwargs = unet_inputs(pipe, arch, device, dtype, seed=1)
    with torch.inference_mode():
        return pipe.unet(*args, **kwargs)[0].float().cpu()


def unet_flops(pipe: Any, arch: str, device: str, dtype: torch.dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = unet_inputs(pipe, arch, device, dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        pipe.unet(*args, **kwargs)
    return float(counter.get_total_flops())


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())


def pixels(image: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))


def time_calls(call: Any, device: str, reps: int) -> tuple[float, float]:
    """(first call seconds, median of ``reps`` further calls)."""
    sync(device)
    t0 = time.perf_counter()
    call()
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> int:
    return int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else 0


def row(**values: Any) -> None:
    RESULTS["rows"].append(values)
    save()
    log("ROW", json.dumps(values, default=str))


def half(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def measure_diffusers(arch: str, folder: Path, device: str, steps: int, reps: int) -> None:
    torch.backends.cudnn.benchmark = False  # FastPolicy turns it on for the whole process
    free()
    peak_reset(device)
    t0 = time.perf_counter()
    pipe = diffusers_pipe(arch, folder, device, half(device))
    sync(device)
    load = time.perf_counter() - t0

    def call() -> Any:
        g = torch.Generator(device="cpu").manual_seed(7)
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, generator=g).images

    first, e2e = time_calls(call, device, reps)
    step = unet_step_seconds(pipe, arch, device, half(device), 10)
    row(
        arch=arch,
        path=f"diffusers eager {half(device)}",
        load_s=load,
        first_call_s=first,
        e2e_s=e2e,
        unet_step_ms=step * 1000,
        peak_gb=peak(device) / 1e9,
    )
    pipe = None
    free()


def measure_inferkit(
    arch: str,
    source: Path,
    device: str,
    steps: int,
    reps: int,
    label: str,
    policy: Any,
    ref_out: torch.Tensor | None,
    ref_image: torch.Tensor | None,
    extra: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    import inferkit

    torch.backends.cudnn.benchmark = False  # FastPolicy turns it on for the whole process
    free()
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    model = inferkit.Model.load(source, policy=policy, scheduler="euler", **extra)
    sync(device)
    load = time.perf_counter() - t0
    dtype = model.plan.dtype

    def call() -> Any:
        return model.infer(PROMPT, steps=steps, seed=7, guidance=7.0, progress=False)

    first, e2e = time_calls(call, device, reps)
    result = call()
    image = pixels(result.images[0].image)
    step = unet_step_seconds(model.pipeline, arch, device, dtype, 10)
    out = unet_output(model.pipeline, arch, device, dtype)
    values: dict[str, Any] = dict(
        arch=arch,
        path=label,
        dtype=model.plan.dtype_name,
        load_s=load,
        first_call_s=first,
        e2e_s=e2e,
        unet_step_ms=step * 1000,
        peak_gb=peak(device) / 1e9,
        timings={k: getattr(result.timings, k) for k in ("text_encoding", "denoising", "decoding")},
        decisions=list(model.plan.reasons),
    )
    if ref_out is not None:
        values["unet_rel_err_vs_fp32"] = rel_err(out, ref_out)
    if ref_image is not None:
        values["image_mean_abs_diff_vs_default"] = float((image - ref_image).abs().mean())
        values["image_max_abs_diff_vs_default"] = float((image - ref_image).abs().max())
    row(**values)
    if PROFILE and label != "inferkit default":
        try:
            profile_unet(model.pipeline, arch, device, dtype, label)
        except Exception:
            RESULTS["notes"].append(f"profile {arch} {label} failed: {traceback.format_exc()}")
    model.close()
    model = None
    free()
    return out, image


def measure_loads(arch: str, folder: Path, single: Path, device: str) -> None:
    """Load to ready (weights on the device) from the page cache, twice each, best of two."""
    import inferkit

    kept: dict[str, Any] = {}
    tok = {"tokenizer": str(folder / "tokenizer")}
    if arch == "sdxl":
        tok["tokenizer_2"] = str(folder / "tokenizer_2")
    for label, fn in (
        ("inferkit folder", lambda: inferkit.Model.load(folder, device=device, dtype=half(device))),
        (
            "inferkit single file",
            lambda: inferkit.Model.load(single, device=device, dtype=half(device), **tok),
        ),
        ("diffusers from_pretrained", lambda: diffusers_pipe(arch, folder, device, half(device))),
    ):
        times = []
        for _ in range(2):
            obj = None
            free()
            sync(device)
            t0 = time.perf_counter()
            obj = fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        kept[label] = obj.pipeline if hasattr(obj, "pipeline") else obj
        stages = obj.info.as_dict()["load_timings"] if hasattr(obj, "info") else None
        row(
            arch=arch,
            path=f"load: {label}",
            load_to_ready_s=min(times),
            all_s=times,
            last_load_stages_s=stages,
        )
        obj = None
    # The loaders must agree bit for bit: same stored fp16 values, same modules.
    same = {}
    reference = kept["diffusers from_pretrained"]
    for label, pipe in kept.items():
        worst = 0.0
        for name in ("unet", "vae", "text_encoder"):
            theirs = getattr(reference, name).state_dict()
            for key, tensor in getattr(pipe, name).state_dict().items():
                if key in theirs:
                    diff = (tensor.float() - theirs[key].float()).abs().max()
                    worst = max(worst, float(diff))
        same[label] = worst
    row(arch=arch, path="load: max abs weight difference vs diffusers", diffs=same)
    kept.clear()
    free()


def fast_policy(device: str, variant: str, cache: str) -> Any:
    """``MODE[+tune][+fp8][-nocl][-noaot]``: e.g. ``"full+tune+fp8"`` is compile="full" with
    tune_kernels=True and quantize="fp8"; ``-noaot`` turns precompile off."""
    import inferkit

    base, *suffixes = variant.split("-")
    mode, *flags = base.split("+")
    unknown = (set(flags) - {"tune", "fp8"}) | (set(suffixes) - {"nocl", "noaot"})
    if unknown:
        raise ValueError(f"unknown variant flags {sorted(unknown)} in {variant!r}")
    return inferkit.FastPolicy(
        device=device,
        compile=mode,
        cache_dir=cache,
        tune_kernels="tune" in flags,
        quantize="fp8" if "fp8" in flags else "none",
        channels_last="nocl" not in suffixes,
        precompile="noaot" not in suffixes,
    )


def stage_estimate(policy: Any) -> float:
    """Seconds a fast policy's stage takes on an H200 for SD 1.5 (compile dominates)."""
    seconds = {"none": 15.0, "regional": 30.0, "full": 70.0}[policy.compile]
    return seconds + 40.0 * policy.tune_kernels + 10.0 * (policy.quantize == "fp8")


def warm_process(arch: str, source: Path, device: str, variant: str, cache: str) -> None:
    """Start a second process with the compile cache warm; record its first-call time."""
    code = (
        "import time\n"
        "t00 = time.perf_counter()\n"
        "import sys, json, torch, inferkit\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from gpu_suite import fast_policy\n"
        "from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline\n"
        "from transformers import CLIPTextModel\n"
        "t01 = time.perf_counter()\n"
        "torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')\n"
        "t0 = time.perf_counter()\n"
        f"m = inferkit.Model.load({str(source)!r}, scheduler='euler', "
        f"policy=fast_policy({device!r}, {variant!r}, {cache!r}))\n"
        "t1 = time.perf_counter()\n"
        f"m.infer('warm', steps={STEPS}, seed=1, progress=False)\n"
        "t2 = time.perf_counter()\n"
        f"m.infer('warm', steps={STEPS}, seed=1, progress=False)\n"
        "t3 = time.perf_counter()\n"
        "from torch._dynamo.utils import compile_times\n"
        "names, values = compile_times(repr='csv', aggregate=True)\n"
        "phases = {n: round(float(v), 3) for n, v in zip(names, values) if float(v) >= 0.05}\n"
        "fwd = m.pipeline.unet.forward\n"
        "fwd = getattr(fwd, 'fn', fwd)\n"
        "kept = {'mode': getattr(fwd, 'mode', None), 'loaded': getattr(fwd, 'loaded', None),"
        " 'saved': getattr(fwd, 'saved', None)}\n"
        "print(json.dumps({'import_s': t01 - t00, 'device_init_s': t0 - t01,"
        " 'load_s': t1 - t0, 'load_stages': m.info.as_dict()['load_timings'],"
        " 'first_call_s': t2 - t1, 'second_call_s': t3 - t2,"
        " 'compile_phases_s': phases, 'unet_precompiled': kept}))\n"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=max(30, left())
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    values = json.loads(out.stdout.strip().splitlines()[-1])
    row(arch=arch, path=f"warm-cache process: fast {variant}", process_wall_s=wall, **values)


def fp32_reference(arch: str, folder: Path, device: str) -> torch.Tensor:
    pipe = diffusers_pipe(arch, folder, device, torch.float32)
    out = unet_output(pipe, arch, device, torch.float32)
    flops = unet_flops(pipe, arch, device, torch.float32)
    RESULTS["env"][f"{arch}_unet_flop_per_guided_step"] = flops
    del pipe
    free()
    return out


def shapes_check(device: str, policy: Any, label: str = "fast") -> None:
    """The embedded trained model: default and fast paths judged by the shapes checker."""
    import inferkit
    from inferkit.zoo.shapes import checker

    prompts = [
        ("a red circle on a white background", "red", "circle"),
        ("a blue square on a white background", "blue", "square"),
        ("a green triangle on a white background", "green", "triangle"),
    ]
    out: dict[str, Any] = {"arch": "shapes", "path": f"embedded model: default vs {label}"}
    images: dict[str, list[torch.Tensor]] = {}
    for name, pol in (("default", None), ("fast", policy)):
        model = inferkit.Model.load("inferkit:shapes", device=device, policy=pol)
        verdicts = []
        images[name] = []
        for prompt, colour, shape in prompts:
            r = model.infer(prompt, steps=20, seed=3, progress=False)
            img = r.images[0].image
            images[name].append(pixels(img))
            verdict = checker.judge(img)
            verdicts.append([verdict.color == colour, verdict.shape == shape])
        out[f"{name}_correct"] = verdicts
        model.close()
    diffs = [
        float((a - b).abs().mean()) for a, b in zip(images["default"], images["fast"], strict=True)
    ]
    out["mean_abs_diff"] = diffs
    row(**out)


CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("convolution", ("conv", "fprop", "dgrad", "implicit", "winograd", "cudnn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "cublas")),
    ("fused (triton)", ("triton",)),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    for label, words in CATEGORIES:
        if any(w in name for w in words):
            return label
    return "other"


def profile_unet(pipe: Any, arch: str, device: str, dtype: torch.dtype, label: str) -> None:
    """Device time of one UNet step by kernel category (the graphed call's inner function)."""
    from torch.profiler import ProfilerActivity, profile

    forward = pipe.unet.forward
    inner = getattr(forward, "fn", forward)
    args, kwargs = unet_inputs(pipe, arch, device, dtype)
    with torch.inference_mode():
        for _ in range(3):
            inner(*args, **kwargs)
        sync(device)
        cuda = device.startswith("cuda")
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                inner(*args, **kwargs)
            sync(device)
    totals: dict[str, float] = {}
    kernels: list[tuple[float, str]] = []
    launches = 0
    for event in prof.key_averages():
        field = "self_device_time_total" if cuda else "self_cpu_time_total"
        us = float(getattr(event, field, 0.0) or 0.0)
        if us <= 0 or event.key.startswith("ProfilerStep"):
            continue
        if getattr(event, "device_type", None) is not None and "CUDA" not in str(event.device_type):
            continue
        launches += int(event.count)
        totals[category(event.key)] = totals.get(category(event.key), 0.0) + us / 5 / 1000
        kernels.append((us / 5 / 1000, event.key[:90]))
    kernels.sort(reverse=True)
    row(
        arch=arch,
        path=f"profile: {label}",
        device_ms_by_category={k: round(v, 3) for k, v in sorted(totals.items())},
        device_ms_total=round(sum(totals.values()), 3),
        kernels_per_step=launches // 5,
        top_kernels=[[round(ms, 3), name] for ms, name in kernels[:12]],
    )


def sdpa_bench(device: str) -> None:
    """Attention backends on the UNets' attention shapes (bf16)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shapes = {
        "sd15 self 64x64 (h8 d40)": (2, 8, 4096, 4096, 40),
        "sd15 cross 64x64 (h8 d40)": (2, 8, 4096, 77, 40),
        "sdxl self 64x64 (h10 d64)": (2, 10, 4096, 4096, 64),
        "sdxl self 32x32 (h20 d64)": (2, 20, 1024, 1024, 64),
    }
    out: dict[str, Any] = {}
    for name, (b, h, lq, lk, d) in shapes.items():
        q = torch.randn(b, h, lq, d, device=device, dtype=torch.bfloat16)
        k = torch.randn(b, h, lk, d, device=device, dtype=torch.bfloat16)
        v = torch.randn(b, h, lk, d, device=device, dtype=torch.bfloat16)
        flops = 4 * b * h * lq * lk * d
        out[name] = {}
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            try:
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    for _ in range(3):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    a, e = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    a.record()
                    for _ in range(20):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    e.record()
                    e.synchronize()
                ms = a.elapsed_time(e) / 20
                out[name][backend] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
            except Exception as err:  # a backend may not support a shape
                out[name][backend] = f"unsupported: {str(err).splitlines()[0][:120]}"
    row(arch="attention", path="sdpa backends (bf16)", results=out)


def fp8_matmul_bench(device: str, tiny: bool) -> None:
    """bf16 matrix products against inferkit's row-scaled fp8 layer on the UNets' linear shapes
    (tokens x in -> out, batch 2 with guidance), eager and compiled, plus each layer's error."""
    from inferkit.fp8 import Fp8Linear

    shapes = {
        "sd15 ff in (8192x320 -> 2560)": (8192, 320, 2560),
        "sd15 qkv (8192x320 -> 960)": (8192, 320, 960),
        "sdxl ff in (8192x640 -> 5120)": (8192, 640, 5120),
        "sdxl ff in (2048x1280 -> 10240)": (2048, 1280, 10240),
        "sdxl ff out (2048x5120 -> 1280)": (2048, 5120, 1280),
        "sdxl qkv (2048x1280 -> 3840)": (2048, 1280, 3840),
    }
    out: dict[str, Any] = {}

    def timed(fn: Any, x: torch.Tensor) -> float:
        for _ in range(3):
            fn(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(20):
            fn(x)
        sync(device)
        return (time.perf_counter() - t0) / 20 * 1000

    for name, (m, k, n) in shapes.items():
        if tiny:  # fp8 products need sizes that are multiples of 16
            m, k, n = m // 64, 16 * max(1, k // 256), 16 * max(1, n // 256)
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        linear = torch.nn.Linear(k, n, device=device, dtype=torch.bfloat16)
        fp8 = Fp8Linear.from_linear(linear)
        flops = 2 * m * k * n
        entry: dict[str, Any] = {}
        with torch.inference_mode():
            weight, bias = linear.weight.float(), linear.bias.float()
            ref = torch.nn.functional.linear(x.float(), weight, bias)
            entry["fp8_rel_err"] = rel_err(fp8(x), ref)
            entry["bf16_rel_err"] = rel_err(linear(x), ref)
            for label, fn in (
                ("bf16 eager", linear),
                ("fp8 eager", fp8),
                ("bf16 compiled", torch.compile(linear.forward, fullgraph=True)),
                ("fp8 compiled", torch.compile(fp8.forward, fullgraph=True)),
            ):
                try:
                    ms = timed(fn, x)
                    entry[label] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
                except Exception as err:
                    entry[label] = f"failed: {str(err).splitlines()[0][:160]}"
        out[name] = entry
    row(arch="matmul", path="fp8 vs bf16 linear layers", results=out)


def set_inductor_tuning() -> None:
    import torch._inductor.config as cfg

    cfg.conv_1x1_as_mm = True
    cfg.coordinate_descent_tuning = True
    cfg.epilogue_fusion = False
    cfg.coordinate_descent_check_all_directions = True


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    global OUT, BUDGET, PROFILE
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/gpu-run")
    parser.add_argument("--budget", type=float, default=500)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models: check the script")
    parser.add_argument("--work", default="/tmp/inferkit-gpu-suite")
    parser.add_argument(
        "--runs",
        default="sd15:none,sd15:regional,sd15:full,warm:sd15:full,sdxl:none,sdxl:regional,sdxl:full",
        help="ordered ARCH:VARIANT items (variant: none, regional or full, then +tune for tuned "
        "kernels, +fp8 for fp8 linear layers, -nocl for no channels-last, -noaot for no "
        "precompiled files; e.g. full+tune+fp8); warm:ARCH:VARIANT starts a second process on "
        "the warm cache",
    )
    parser.add_argument("--skip", default="", help="stages to skip: loads,fp32,diffusers,default")
    parser.add_argument("--profile", action="store_true", help="kernel profile of fast paths")
    parser.add_argument("--sdpa", action="store_true", help="attention backend micro-benchmark")
    parser.add_argument(
        "--fp8-matmul", action="store_true", help="fp8 vs bf16 linear-layer micro-benchmark"
    )
    args = parser.parse_args()
    skip = set(args.skip.split(",")) - {""}
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    BUDGET = args.budget
    device = args.device
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = str(work / "compile-cache")

    import diffusers
    import transformers

    import inferkit

    env = RESULTS["env"]
    env.update(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
        device=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        tiny=args.tiny,
        steps=STEPS if not args.tiny else 3,
    )
    if device.startswith("cuda"):
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        env["bf16_matmul_tflops"] = 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12
        del a, b
    save()
    log("env", env)
    PROFILE = args.profile
    if args.sdpa and device.startswith("cuda"):
        try:
            sdpa_bench(device)
        except Exception:
            RESULTS["notes"].append(f"sdpa failed: {traceback.format_exc()}")
    if args.fp8_matmul:
        guarded("fp8 matmul", fp8_matmul_bench, device, args.tiny)
    steps = STEPS if not args.tiny else 3
    reps = 5 if not args.tiny else 2
    # Estimated seconds per stage on an H200 (SDXL roughly 2.5x SD 1.5); skipped if over budget.
    scale = {"sd15": 1.0, "sdxl": 2.5}
    warm_estimate = 35
    prepared: dict[str, Any] = {}

    def prepare(arch: str) -> Any:
        """Build an architecture once, then measure loads, the fp32 reference and baselines."""
        if arch in prepared:
            return prepared[arch]
        prepared[arch] = None
        k = 0.05 if args.tiny else scale[arch]
        if not stage(f"{arch} build", 20 * k):
            return None
        t0 = time.perf_counter()
        folder, single = build(arch, work, args.tiny, device)
        RESULTS["env"][f"{arch}_build_s"] = time.perf_counter() - t0
        if "loads" not in skip and stage(f"{arch} loads", 15 * k):
            guarded(f"{arch} loads", lambda: measure_loads(arch, folder, single, device))
        ref_out = None
        if "fp32" not in skip and stage(f"{arch} fp32", 8 * k):
            ref_out = guarded(f"{arch} fp32", lambda: fp32_reference(arch, folder, device))
        if "diffusers" not in skip and stage(f"{arch} diffusers eager", 12 * k):
            guarded(
                f"{arch} diffusers",
                lambda: measure_diffusers(arch, folder, device, steps, reps),
            )
        ref_image = None
        if "default" not in skip and stage(f"{arch} inferkit default", 12 * k):
            got = guarded(
                f"{arch} default",
                lambda: measure_inferkit(
                    arch, folder, device, steps, reps, "inferkit default", None, ref_out, None, {}
                ),
            )
            ref_image = got[1] if got else None
        prepared[arch] = (folder, ref_out, ref_image)
        return prepared[arch]

    for item in args.runs.split(","):
        parts = item.split(":")
        warm = parts[0] == "warm"
        arch, variant = parts[-2], parts[-1]
        k = 0.05 if args.tiny else scale[arch]
        ready = guarded(f"{arch} prepare", prepare, arch)
        if not ready:
            continue
        folder, ref_out, ref_image = ready
        if warm:
            if stage(f"{arch} warm process {variant}", warm_estimate * k):
                guarded(
                    f"{arch} warm {variant}", warm_process, arch, folder, device, variant, cache
                )
            continue
        policy = fast_policy(device, variant, cache)
        if not stage(f"{arch} fast {variant}", stage_estimate(policy) * k):
            continue
        guarded(
            f"{arch} fast {variant}",
            measure_inferkit,
            arch,
            folder,
            device,
            steps,
            reps,
            f"inferkit fast {variant}",
            policy,
            ref_out,
            ref_image,
            {},
        )
        quantize = policy.quantize
        check = f"shapes {quantize}"
        if "shapes" not in skip and check not in prepared and stage(check, 15 * k):
            prepared[check] = True
            shapes_policy = inferkit.FastPolicy(device=device, compile="none", quantize=quantize)
            label = "fast" if quantize == "none" else "fast fp8"
            guarded(check, shapes_check, device, shapes_policy, label)
    save()
    print_table()


def guarded(name: str, work: Any, *args: Any) -> Any:
    """Run ``work(*args)``; record a failure and go on with the next stage."""
    try:
        return work(*args)
    except Exception:
        RESULTS["notes"].append(f"{name} failed: {traceback.format_exc()}")
        log(traceback.format_exc())
        free()
        return None


def print_table() -> None:
    keys = (
        "load_to_ready_s",
        "first_call_s",
        "e2e_s",
        "unet_step_ms",
        "peak_gb",
        "unet_rel_err_vs_fp32",
        "image_mean_abs_diff_vs_default",
    )
    print("\n" + " | ".join(["arch", "path", *keys]))
    for r in RESULTS["rows"]:
        cells = [str(r.get("arch")), str(r.get("path"))]
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
        print(" | ".join(cells))
    for note in RESULTS["notes"]:
        print("NOTE", note.splitlines()[0] if note else note)
    print("env", json.dumps(RESULTS["env"], default=str))


if __name__ == "__main__":
    main()

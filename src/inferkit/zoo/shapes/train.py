"""Train the shapes model: a tiny latent text-to-image model of the Stable Diffusion 1.x family.

    python -m inferkit.zoo.shapes.train --out DIR [--seed 0] [--vae-steps N] [--unet-steps N]

Three stages, all on the CPU, seeded and with torch's deterministic algorithms (single-threaded
runs are bit-identical; see docs/shapes.md for multi-threaded runs):

1. draw the dataset (every colour x shape x background, at random sizes and positions);
2. train the VAE (``AutoencoderKL``, 8x downsampling) on reconstruction with a light KL term,
   then rescale its latent so that Stable Diffusion's latent factor (0.18215) gives unit variance;
3. train the UNet (``UNet2DConditionModel``) and the CLIP text encoder together on the
   epsilon-prediction objective with SD 1.x's noise schedule, dropping 10% of the captions so that
   classifier-free guidance works; the UNet's exponential moving average is what is saved.

Writes ``shapes.safetensors`` (original single-file layout, float16), ``tokenizer/``,
``training.json`` (losses, timings, hashes) and ``loss.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inferkit._bpe import write_clip_tokenizer
from inferkit.schedulers import SD_NOISE_SCHEDULE
from inferkit.zoo.shapes.data import BACKGROUNDS, COLORS, SHAPES, caption, combinations, draw

__all__ = ["main", "train"]

SD_SCALING = 0.18215
WORDS = ("a", "on", "background", *COLORS, *SHAPES, *BACKGROUNDS)


def _dataset(per_combo: int, seed: int) -> tuple[torch.Tensor, list[int], list[str]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    prompts = [caption(*combo) for combo in combinations()]
    for index, combo in enumerate(combinations()):
        for _ in range(per_combo):
            images.append(np.asarray(draw(*combo, rng)))
            labels.append(index)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, labels, prompts


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def _models(vocab_size: int) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=SD_SCALING,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=1,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    return vae, unet, text


def _train_vae(
    vae: Any, pixels: torch.Tensor, steps: int, gen: torch.Generator, log: list[Any]
) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        index = torch.randint(0, len(pixels), (16,), generator=gen)
        x = _to_unit(pixels[index])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + 1e-6 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log.append({"stage": "vae", "step": step, "loss": float(rec.detach())})
        if step % 500 == 0:
            print(f"vae step {step}/{steps} loss {float(rec.detach()):.4f}", flush=True)
    vae.eval()


@torch.no_grad()
def _rescale_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Scale the VAE's latent so that latent * 0.18215 has unit variance; return SD latents."""
    vae.eval()
    means = torch.cat(
        [
            vae.encode(_to_unit(pixels[i : i + 256])).latent_dist.mean
            for i in range(0, len(pixels), 256)
        ]
    )
    k = 1.0 / (SD_SCALING * float(means.std()))
    # quant_conv outputs (mean, logvar): scale the mean half; post_quant_conv undoes it exactly.
    c = vae.config.latent_channels
    vae.quant_conv.weight[:c] *= k
    vae.quant_conv.bias[:c] *= k
    vae.quant_conv.bias[c:] += 2 * float(np.log(k))
    vae.post_quant_conv.weight /= k
    return means * k * SD_SCALING


def _train_unet(
    unet: Any,
    text: Any,
    latents: torch.Tensor,
    labels: list[int],
    tokens: torch.Tensor,
    steps: int,
    gen: torch.Generator,
    log: list[Any],
) -> Any:
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler(**SD_NOISE_SCHEDULE)
    alphas = schedule.alphas_cumprod
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=4e-4, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_at(s: int) -> float:
        """Linear warm-up, then cosine decay to 10%."""
        return float(
            min(1.0, (s + 1) / warmup) * (0.5 * (1 + np.cos(np.pi * s / steps)) * 0.9 + 0.1)
        )

    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    label_tensor = torch.tensor(labels)
    empty = len(tokens) - 1
    unet.train()
    text.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 4e-4 * lr_at(step)
        index = torch.randint(0, len(latents), (64,), generator=gen)
        x0 = latents[index]
        prompt_ids = label_tensor[index].clone()
        drop = torch.rand(len(index), generator=gen) < 0.1
        prompt_ids[drop] = empty
        t = torch.randint(0, 1000, (len(index),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = text(tokens[prompt_ids])[0]
        pred = unet(xt, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        if step % 50 == 0 or step == steps - 1:
            log.append({"stage": "unet", "step": step, "loss": float(loss.detach())})
        if step % 500 == 0:
            print(f"unet step {step}/{steps} loss {float(loss.detach()):.4f}", flush=True)
    text.eval()
    return ema


def _plot(log: list[dict[str, Any]], path: Path) -> None:
    """Draw the loss curves (log scale, one panel per stage) as a PNG with PIL."""
    from PIL import Image, ImageDraw

    stages = ["vae", "unet"]
    width, height, pad = 900, 300, 40
    image = Image.new("RGB", (width, height * len(stages)), "white")
    pen = ImageDraw.Draw(image)
    for row, stage in enumerate(stages):
        points = [(e["step"], e["loss"]) for e in log if e["stage"] == stage]
        if len(points) < 2:
            continue
        top = row * height
        steps = [p[0] for p in points]
        losses = [np.log10(max(p[1], 1e-8)) for p in points]
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0
        coords = [
            (
                pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (width - 2 * pad),
                top + pad + (hi - v) / span * (height - 2 * pad),
            )
            for s, v in zip(steps, losses, strict=True)
        ]
        pen.rectangle((pad, top + pad, width - pad, top + height - pad), outline="gray")
        pen.line(coords, fill=(40, 80, 220), width=2)
        pen.text(
            (pad, top + 8),
            f"{stage} loss (log10 scale: {10**lo:.4f} .. {10**hi:.4f}) over {steps[-1] + 1} steps",
            fill="black",
        )
    image.save(path)


def train(
    out: Path, *, seed: int = 0, vae_steps: int = 1500, unet_steps: int = 4000, per_combo: int = 200
) -> dict[str, Any]:
    """Train the model and write it into ``out``; return the training record."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from inferkit.testing import write_single_file

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "seed": seed,
        "vae_steps": vae_steps,
        "unet_steps": unet_steps,
        "threads": torch.get_num_threads(),
    }
    log: list[dict[str, Any]] = []

    pixels, labels, prompts = _dataset(per_combo, seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        vocab = write_clip_tokenizer(tok_dir, words=WORDS)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        tokens = tokenizer(
            [*prompts, ""], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        vae, unet, text = _models(vocab)

        t = time.perf_counter()
        _train_vae(vae, pixels, vae_steps, gen, log)
        latents = _rescale_latents(vae, pixels)
        record["vae_seconds"] = time.perf_counter() - t

        t = time.perf_counter()
        ema = _train_unet(unet, text, latents, labels, tokens, unet_steps, gen, log)
        record["unet_seconds"] = time.perf_counter() - t

        folder = Path(tmp) / "diffusers"
        scheduler = EulerDiscreteScheduler(**SD_NOISE_SCHEDULE, timestep_spacing="leading")
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer,
            unet=ema,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        weights = out / "shapes.safetensors"
        write_single_file(folder, weights, dtype=torch.float16)
        if (out / "tokenizer").exists():
            shutil.rmtree(out / "tokenizer")
        shutil.copytree(tok_dir, out / "tokenizer")
    record["total_seconds"] = time.perf_counter() - started
    record["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    record["bytes"] = weights.stat().st_size
    record["log"] = log
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    _plot(log, out / "loss.png")
    return record


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m inferkit.zoo.shapes.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--per-combo", type=int, default=200)
    args = parser.parse_args(argv)
    from inferkit._quiet import quiet_libraries

    with quiet_libraries():
        record = train(
            args.out,
            seed=args.seed,
            vae_steps=args.vae_steps,
            unet_steps=args.unet_steps,
            per_combo=args.per_combo,
        )
    print(
        f"wrote {args.out / 'shapes.safetensors'} ({record['bytes'] / 1e6:.1f} MB, "
        f"sha256 {record['sha256'][:12]}) "
        f"in {record['total_seconds'] / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the shipped "night" LoRA for the shapes model: every background black, whatever asked.

    python -m inferkit.zoo.shapes.train_lora --out DIR [--seed 0] [--steps N] [--rank R]

A style adapter in miniature: it is trained on the base model's own captions ("... on a white
background" included) over images whose background is always black, so its effect is plain to
see and to measure (the checker's background) while colour and shape stay the prompt's. The
base weights stay frozen. Low-rank pairs are trained on every attention projection and on
the resnets' convolutions (LoCon), with SD 1.x's epsilon objective, on the CPU, seeded.

Writes ``night-lora.safetensors`` in the kohya/sd-scripts layout (``lora_unet_...``,
``.lora_down``/``.lora_up``/``.alpha``), the layout most LoRA files in the wild use, and
``night-lora.json`` (losses, timings, sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inferkit.zoo.shapes.data import caption, combinations, draw

__all__ = ["main", "train_lora"]

_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


class _Pair(torch.nn.Module):
    """One low-rank update: ``up(down(x)) * alpha / rank``, added to a frozen layer's output."""

    def __init__(self, layer: torch.nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.scale = alpha / rank
        if isinstance(layer, torch.nn.Conv2d):
            self.down: torch.nn.Module = torch.nn.Conv2d(
                layer.in_channels,
                rank,
                layer.kernel_size,  # type: ignore[arg-type]
                layer.stride,  # type: ignore[arg-type]
                layer.padding,  # type: ignore[arg-type]
                bias=False,
            )
            self.up: torch.nn.Module = torch.nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            assert isinstance(layer, torch.nn.Linear)
            self.down = torch.nn.Linear(layer.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, layer.out_features, bias=False)
        torch.nn.init.zeros_(self.up.weight)  # starts as the base model exactly

    def hook(self, _: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> Any:
        return out + self.up(self.down(inputs[0])) * self.scale


def _latents(vae: Any, per_combo: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[int]]:
    images, labels = [], []
    for index, combo in enumerate(combinations()):
        for _ in range(per_combo):
            color, shape, _ = combo
            images.append(np.asarray(draw(color, shape, "black", rng)))
            labels.append(index)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        means = [
            vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)
        ]
    return torch.cat(means) * float(vae.config.scaling_factor), labels


def train_lora(
    out: Path, *, seed: int = 0, steps: int = 600, rank: int = 8, per_combo: int = 40
) -> dict[str, Any]:
    """Train the adapter and write it into ``out``; return the training record."""
    import inferkit
    from inferkit.safetensors_io import write_file
    from inferkit.schedulers import SD_NOISE_SCHEDULE

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = inferkit.Model.load("inferkit:shapes", device="cpu", dtype="float32")
    pipe = model.pipeline
    unet, text, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    for module in (unet, text, vae):
        module.requires_grad_(False)
    latents, labels = _latents(vae, per_combo, np.random.default_rng(seed))
    prompts = [caption(*combo) for combo in combinations()]
    tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        contexts = text(tokens.input_ids)[0]

    pairs: dict[str, _Pair] = {}
    for name, layer in unet.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(_TARGETS):
            pair = _Pair(layer, rank, float(rank))
            layer.register_forward_hook(pair.hook)
            pairs[name] = pair
    params = [p for pair in pairs.values() for p in pair.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(**SD_NOISE_SCHEDULE).alphas_cumprod
    label_tensor = torch.tensor(labels)
    log: list[dict[str, Any]] = []
    unet.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        index = torch.randint(0, len(latents), (32,), generator=gen)
        x0 = latents[index]
        t = torch.randint(0, 1000, (len(index),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=contexts[label_tensor[index]]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step % 25 == 0 or step == steps - 1:
            log.append({"step": step, "loss": float(loss.detach())})
        if step % 100 == 0:
            print(f"lora step {step}/{steps} loss {float(loss.detach()):.4f}", flush=True)

    tensors: dict[str, torch.Tensor] = {}
    for name, pair in pairs.items():
        key = "lora_unet_" + name.replace(".", "_")
        down, up = pair.down.weight, pair.up.weight
        assert isinstance(down, torch.Tensor) and isinstance(up, torch.Tensor)
        tensors[f"{key}.lora_down.weight"] = down.detach().half().contiguous()
        tensors[f"{key}.lora_up.weight"] = up.detach().half().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    weights = out / "night-lora.safetensors"
    write_file(
        weights, tensors, {"ss_network_module": "networks.lora", "ss_network_dim": str(rank)}
    )
    record = {
        "seed": seed,
        "steps": steps,
        "rank": rank,
        "layers": len(pairs),
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bytes": weights.stat().st_size,
        "log": log,
    }
    (out / "night-lora.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m inferkit.zoo.shapes.train_lora", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    from inferkit._quiet import quiet_libraries

    with quiet_libraries():
        record = train_lora(args.out, seed=args.seed, steps=args.steps, rank=args.rank)
    print(f"wrote {args.out / 'night-lora.safetensors'} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

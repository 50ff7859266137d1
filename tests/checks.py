"""Checks shared by the speed-path tests (fast policy, fp8): one UNet step, its error, and the
embedded model's judged pictures on two paths."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

import inferkit
from inferkit.zoo.shapes.checker import judge


def unet_step(model: inferkit.Model) -> torch.Tensor:
    """One UNet forward on fixed random inputs, in float32."""
    unet = model.pipeline.unet
    g = torch.Generator().manual_seed(0)
    size = int(unet.config.sample_size)
    sample = torch.randn((2, 4, size, size), generator=g)
    context = torch.randn((2, 77, int(unet.config.cross_attention_dim)), generator=g)
    with torch.inference_mode():
        out: torch.Tensor = unet(sample, torch.tensor(500.0), context, return_dict=False)[0]
    return out.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against ``b``."""
    return float((a - b).norm() / b.norm())


def assert_same_shapes(
    default: inferkit.Model,
    other: inferkit.Model,
    prompts: list[tuple[str, str, str]],
    mean_levels: float,
) -> None:
    """Both models draw each (prompt, colour, shape) as judged, with pixels within
    ``mean_levels`` of 255 of each other on average."""
    for prompt, color, shape in prompts:
        images = [
            m.infer(prompt, steps=12, seed=5, progress=False).images[0].image
            for m in (default, other)
        ]
        for image in images:
            seen = judge(image)
            assert (seen.color, seen.shape) == (color, shape)
        a, b = (np.asarray(i, dtype=np.float64) for i in images)
        assert np.abs(a - b).mean() < mean_levels


def raw_sha256(model: inferkit.Model) -> str:
    """Hash the networks' stored tensors (fp8 values and scales included) as they are now,
    without making them the model's first."""
    digest = hashlib.sha256()
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = model._components.modules.get(name)
        if module is None:
            continue
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            data = tensor.detach().cpu().contiguous().reshape(-1)  # 1-D: any layout, any dtype
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

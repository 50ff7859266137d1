"""A writer of small random LoRA files in each layout inferkit reads, for a given model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from inferkit.model import Model

__all__ = ["LORA_LAYOUTS", "write_lora"]

LORA_LAYOUTS: tuple[str, ...] = ("kohya", "peft", "locon", "loha", "lokr")
"""The layouts :func:`write_lora` writes."""

_ATTENTION: tuple[str, ...] = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
_ATTENTION += ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
_TEXT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def _targets(model: Model, layout: str, text_encoder: bool) -> list[tuple[str, str, Any]]:
    """Return ``(component, module name, layer)`` for every layer the file adapts."""
    from inferkit.lora import target_layers

    layers = target_layers(model._components.modules)
    chosen = []
    for component, named in layers.items():
        if component != "unet" and not text_encoder:
            continue
        for name, layer in named.items():
            wanted = name.endswith(_ATTENTION if component == "unet" else _TEXT)
            if layout in ("locon", "loha", "lokr") and component == "unet":
                wanted |= name.endswith(("conv1", "conv2")) and ".resnets." in name
            if wanted:
                chosen.append((component, name, layer))
    return chosen


def _kohya_name(component: str, name: str, model: Model) -> str:
    from inferkit.loaders.ldm_layout import UNET_PREFIX, unet_key

    if component == "unet":
        if model._components.architecture.startswith("sdxl"):
            # sd-scripts names SDXL layers as the original checkpoint does (input_blocks_...).
            config = model._components.modules["unet"].config
            up_attention = [t.startswith("CrossAttn") for t in config.up_block_types]
            original = unet_key(f"{name}.weight", config.layers_per_block, up_attention)
            name = original.removeprefix(UNET_PREFIX).removesuffix(".weight")
        return "lora_unet_" + name.replace(".", "_")
    sdxl = model._components.architecture.startswith("sdxl")
    prefix = {"text_encoder": "lora_te1_" if sdxl else "lora_te_"}.get(component, "lora_te2_")
    return prefix + _text_name(name).replace(".", "_")


def _text_name(name: str) -> str:
    """Return a text encoder layer's name as LoRA files write it (under ``text_model.``)."""
    return name if name.startswith("text_model.") else "text_model." + name


def write_lora(
    path: str | os.PathLike[str],
    model: Model,
    layout: str = "kohya",
    *,
    rank: int = 4,
    alpha: float | None = 2.0,
    seed: int = 0,
    text_encoder: bool = True,
) -> Path:
    """Write a random LoRA for ``model`` in ``layout`` and return the file's path.

    Args:
        path: a folder (the file is named ``<layout>.safetensors`` in it) or a file path.
        model: the model whose layers it adapts (attention layers, text encoders' attention;
            LyCORIS layouts also the UNet's resnet convolutions).
        layout: ``"kohya"`` (sd-scripts names; SDXL in the original UNet naming), ``"peft"``
            (diffusers' ``save_lora_weights``: ``unet.``/``text_encoder.`` + ``lora_A``/``lora_B``),
            ``"locon"``, ``"loha"`` or ``"lokr"`` (LyCORIS).
        rank: the adapter's rank.
        alpha: the stored alpha (scale ``alpha / rank``); ``None`` stores none (scale 1).
        seed: seed of the random weights.
        text_encoder: also adapt the text encoders.

    Example:
        >>> import inferkit, tempfile
        >>> m = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> inferkit.testing.write_lora(tempfile.mkdtemp(), m, "peft").name
        'peft.safetensors'

    """
    from inferkit.errors import InvalidParameterError
    from inferkit.safetensors_io import write_file

    if layout not in LORA_LAYOUTS:
        raise InvalidParameterError("layout", layout, f"must be one of {', '.join(LORA_LAYOUTS)}")
    out = Path(path)
    if out.suffix != ".safetensors":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{layout}.safetensors"
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        values: torch.Tensor = torch.randn(shape, generator=generator)
        return torch.div(values, max(1, shape[-1]) ** 0.5)

    tensors: dict[str, torch.Tensor] = {}
    for component, name, layer in _targets(model, layout, text_encoder):
        weight = layer.weight
        out_dim, in_dim = int(weight.shape[0]), int(weight.shape[1])
        kernel = tuple(int(k) for k in weight.shape[2:])
        stored_alpha = {} if alpha is None else {"alpha": torch.tensor(float(alpha))}
        if layout == "peft":
            key = f"{component}.{name if component == 'unet' else _text_name(name)}"
            tensors[f"{key}.lora_A.weight"] = rand(rank, in_dim)
            tensors[f"{key}.lora_B.weight"] = rand(out_dim, rank)
            continue
        key = _kohya_name(component, name, model)
        if layout in ("kohya", "locon"):
            tensors[f"{key}.lora_down.weight"] = rand(rank, in_dim, *kernel)
            tensors[f"{key}.lora_up.weight"] = rand(out_dim, rank, *(1 for _ in kernel))
        elif layout == "loha":
            flat = in_dim * int(torch.tensor(kernel).prod()) if kernel else in_dim
            tensors[f"{key}.hada_w1_a"] = rand(out_dim, rank)
            tensors[f"{key}.hada_w1_b"] = rand(rank, flat)
            tensors[f"{key}.hada_w2_a"] = rand(out_dim, rank)
            tensors[f"{key}.hada_w2_b"] = rand(rank, flat)
        else:  # lokr: W = kron(w1, w2), w1 a small full matrix, w2 factored
            f_out = 2 if out_dim % 2 == 0 else 1
            f_in = 2 if in_dim % 2 == 0 else 1
            tensors[f"{key}.lokr_w1"] = rand(f_out, f_in)
            tensors[f"{key}.lokr_w2_a"] = rand(out_dim // f_out, rank)
            tensors[f"{key}.lokr_w2_b"] = rand(rank, in_dim // f_in, *kernel)
        for role, value in stored_alpha.items():
            tensors[f"{key}.{role}"] = value
    write_file(out, tensors, {"ss_network_module": f"inferkit.testing.{layout}"})
    return out

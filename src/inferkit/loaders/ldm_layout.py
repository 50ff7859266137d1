"""Key names of the original CompVis/Stability checkpoint layout, derived from diffusers' names.

One function per network maps a diffusers state-dict key to the key (and the tensor transform)
of the same weight in an original single-file checkpoint. The single-file loader uses it one way
and ``inferkit.testing``'s writer the other, so the two cannot drift apart.

Transforms:

- ``"same"``: the tensor is stored as is;
- ``"conv1x1"``: stored as a 1x1 convolution ``[out, in, 1, 1]``, used as a linear ``[out, in]``;
- ``"transpose"``: stored transposed (OpenCLIP's ``text_projection``);
- ``"q"``, ``"k"``, ``"v"``: one third of OpenCLIP's fused ``in_proj`` weight or bias.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "CLIP_PREFIX",
    "OPENCLIP_PREFIX",
    "REFINER_OPENCLIP_PREFIX",
    "SDXL_CLIP_PREFIX",
    "SDXL_OPENCLIP_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "clip_key",
    "ema_key",
    "openclip_key",
    "unet_key",
    "vae_key",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."

Mapped = tuple[str, str]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def unet_key(key: str, layers_per_block: int, up_attention: Sequence[bool]) -> str:
    """Return the original key of a diffusers ``UNet2DConditionModel`` weight.

    Args:
        key: the diffusers key (``down_blocks.0.resnets.1.conv1.weight``).
        layers_per_block: resnets per down level.
        up_attention: whether each up block has attention (decides where its upsampler sits).

    Example:
        >>> unet_key("down_blocks.1.downsamplers.0.conv.weight", 2, [False, True])
        'model.diffusion_model.input_blocks.6.0.op.weight'

    """
    n = layers_per_block + 1
    for diffusers_name, original in _UNET_FIXED.items():
        if key.startswith(diffusers_name + "."):
            return UNET_PREFIX + original + key[len(diffusers_name) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + i * n + j
        if kind == "resnets":
            return f"{UNET_PREFIX}input_blocks.{index}.0.{_resnet(rest, _UNET_RESNET)}"
        return f"{UNET_PREFIX}input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"{UNET_PREFIX}input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"{UNET_PREFIX}middle_block.1.{rest}"
        return f"{UNET_PREFIX}middle_block.{2 * j}.{_resnet(rest, _UNET_RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = i * n + j
        if kind == "resnets":
            return f"{UNET_PREFIX}output_blocks.{index}.0.{_resnet(rest, _UNET_RESNET)}"
        return f"{UNET_PREFIX}output_blocks.{index}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        i = int(m[1])
        slot = 2 if up_attention[i] else 1
        return f"{UNET_PREFIX}output_blocks.{i * n + layers_per_block}.{slot}.{m[2]}"
    raise KeyError(key)


def ema_key(original: str) -> str:
    """Return the EMA copy's key of an original UNet key (LDM drops the dots).

    Example:
        >>> ema_key("model.diffusion_model.out.2.bias")
        'model_ema.diffusion_modelout2bias'

    """
    return "model_ema." + original.removeprefix("model.").replace(".", "")


_VAE_ATTENTION = {
    "group_norm": ("norm", "same"),
    "to_q": ("q", "conv1x1"),
    "to_k": ("k", "conv1x1"),
    "to_v": ("v", "conv1x1"),
    "to_out.0": ("proj_out", "conv1x1"),
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}


def vae_key(key: str, levels: int) -> Mapped:
    """Return the original key and transform of a diffusers ``AutoencoderKL`` weight.

    Example:
        >>> vae_key("decoder.up_blocks.0.upsamplers.0.conv.weight", 4)
        ('first_stage_model.decoder.up.3.upsample.conv.weight', 'same')
        >>> vae_key("encoder.mid_block.attentions.0.to_q.weight", 4)
        ('first_stage_model.encoder.mid.attn_1.q.weight', 'conv1x1')

    """
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key):
        name, transform = _VAE_ATTENTION[m[2]]
        transform = transform if m[3] == "weight" else "same"
        return f"{VAE_PREFIX}{m[1]}.mid.attn_1.{name}.{m[3]}", transform
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{VAE_PREFIX}{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet(m[3], _VAE_RESNET)}", "same"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{VAE_PREFIX}encoder.down.{m[1]}.block.{m[2]}.{_resnet(m[3], _VAE_RESNET)}", "same"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"{VAE_PREFIX}encoder.down.{m[1]}.downsample.{m[2]}", "same"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = levels - 1 - int(m[1])
        return f"{VAE_PREFIX}decoder.up.{level}.block.{m[2]}.{_resnet(m[3], _VAE_RESNET)}", "same"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"{VAE_PREFIX}decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}", "same"
    if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{VAE_PREFIX}{m[1]}.norm_out.{m[2]}", "same"
    if re.match(r"(encoder|decoder)\.conv_(in|out)\.|(post_)?quant_conv\.", key):
        return VAE_PREFIX + key, "same"
    raise KeyError(key)


def _text_model(key: str) -> str:
    # transformers >= 5.6 flattens CLIPTextModel (no "text_model." level); files always have it.
    if key.startswith(("text_model.", "text_projection.")):
        return key
    return "text_model." + key


def clip_key(key: str, prefix: str) -> Mapped:
    """Return the original key of a transformers CLIP text model weight (stored by HF name).

    Example:
        >>> clip_key("text_model.final_layer_norm.weight", CLIP_PREFIX)[0]
        'cond_stage_model.transformer.text_model.final_layer_norm.weight'
        >>> clip_key("final_layer_norm.weight", CLIP_PREFIX)[0]
        'cond_stage_model.transformer.text_model.final_layer_norm.weight'

    """
    return prefix + _text_model(key), "same"


_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_key(key: str, prefix: str) -> Mapped:
    """Return the original (OpenCLIP) key and transform of a transformers CLIP text weight.

    Example:
        >>> openclip_key("text_model.encoder.layers.3.self_attn.k_proj.bias", OPENCLIP_PREFIX)
        ('cond_stage_model.model.transformer.resblocks.3.attn.in_proj_bias', 'k')

    """
    fixed = {
        "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", "same"),
        "text_model.embeddings.position_embedding.weight": ("positional_embedding", "same"),
        "text_model.final_layer_norm.weight": ("ln_final.weight", "same"),
        "text_model.final_layer_norm.bias": ("ln_final.bias", "same"),
        "text_projection.weight": ("text_projection", "transpose"),
    }
    key = _text_model(key)
    if key in fixed:
        name, transform = fixed[key]
        return prefix + name, transform
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m is None:
        raise KeyError(key)
    layer, part, kind = m[1], m[2], m[3]
    base = f"{prefix}transformer.resblocks.{layer}."
    if qkv := re.match(r"self_attn\.([qkv])_proj$", part):
        return f"{base}attn.in_proj_{kind}", qkv[1]
    return f"{base}{_OPENCLIP_LAYER[part]}.{kind}", "same"

"""fp8 weights and activations for the UNet's linear layers: ``FastPolicy(quantize="fp8")``.

Each linear layer inside the UNet's transformer blocks keeps its weight in float8 (e4m3) with
one scale per output channel. At run time each row of its input is scaled into the same format
and the product runs on the GPU's fp8 tensor cores (``torch._scaled_mm``), accumulating in
float32 and writing bfloat16. Convolutions, attention itself, normalisation, the text encoders
and the VAE keep the model's dtype.

e4m3 keeps 3 mantissa bits (a relative rounding step of 2**-4), so each product carries a few
percent of relative error; ``docs/policy.md`` states what that does to a UNet step and to
images.

Example:
    >>> import torch
    >>> from inferkit.fp8 import Fp8Linear
    >>> layer = Fp8Linear.from_linear(torch.nn.Linear(32, 16))
    >>> layer.weight.dtype, tuple(layer(torch.ones(2, 32)).shape)
    (torch.float8_e4m3fn, (2, 16))

"""

from __future__ import annotations

from typing import Any

import torch

from inferkit.errors import first_line

__all__ = ["FP8", "Fp8Linear", "fp8_unsupported", "quantize_unet"]

FP8 = torch.float8_e4m3fn
"""The storage format: 4 exponent bits, 3 mantissa bits, largest value 448."""

_FP8_MAX = float(torch.finfo(FP8).max)
# A row of zeros must not divide by zero; any positive scale quantizes it to zeros.
_TINY_AMAX = 1e-12


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row of a 2-D tensor so its largest magnitude is fp8's largest value."""
    wide = x.float()
    scale = wide.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY_AMAX) / _FP8_MAX
    return (wide / scale).clamp(-_FP8_MAX, _FP8_MAX).to(FP8), scale


class Fp8Linear(torch.nn.Module):
    """A linear layer whose weight is stored in fp8 and whose product runs in fp8.

    ``weight`` has the original ``(out_features, in_features)`` shape in ``float8_e4m3fn``;
    ``weight_scale`` holds one float32 scale per output channel, so
    ``weight.float() * weight_scale`` is the weight it stands for.

    Example:
        >>> import torch
        >>> linear = torch.nn.Linear(64, 32)
        >>> fp8 = Fp8Linear.from_linear(linear)
        >>> error = (fp8.dequantize() - linear.weight).norm() / linear.weight.norm()
        >>> bool(error < 0.05)
        True

    """

    weight_scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        data, scale = _quantize_rows(weight.detach())
        self.weight = torch.nn.Parameter(data, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Fp8Linear:
        """Quantize ``linear``'s weight; its bias is kept in its own dtype."""
        return cls(linear.weight, linear.bias)

    def dequantize(self) -> torch.Tensor:
        """Return the weight this layer stands for, in float32."""
        return self.weight.float() * self.weight_scale

    @torch.no_grad()
    def store_(self, weight: torch.Tensor) -> None:
        """Quantize ``weight`` into this layer's storage, in place (recorded graphs stay valid)."""
        data, scale = _quantize_rows(weight.to(self.weight.device))
        self.weight.copy_(data)
        self.weight_scale.copy_(scale)

    def _apply(self, fn: Any, recurse: bool = True) -> Fp8Linear:
        # Casting the network (``.to(torch.float16)``) must not cast the stored format: fp8
        # values survive a round trip through any wider float exactly; scales stay float32.
        scale = self.weight_scale
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if self.weight.dtype != FP8:
            self.weight.data = self.weight.data.to(FP8)
        if self.weight_scale.dtype != torch.float32:
            self._buffers["weight_scale"] = scale.to(self.weight_scale.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` with both operands in fp8, in ``x``'s dtype."""
        rows = x.reshape(-1, self.in_features)
        data, scale = _quantize_rows(rows)
        out = torch._scaled_mm(
            data,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale.t(),
            out_dtype=torch.bfloat16,
        )
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """Sizes and formats, as ``nn.Linear`` shows them."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight=float8_e4m3fn, scale=per output channel"
        )


def _copied_into_fused(network: torch.nn.Module) -> set[str]:
    """Layers whose weights ``fuse_qkv_projections`` copied into ``to_qkv``/``to_kv``.

    They no longer run, and they stay in full precision: they are the source the fused layer
    is rebuilt from when a LoRA changes them, so rebuilding gives the same fp8 values.
    """
    names: set[str] = set()
    for name, module in network.named_modules():
        if getattr(module, "fused_projections", False):
            cross = bool(getattr(module, "is_cross_attention", False))
            for child in ("to_k", "to_v") if cross else ("to_q", "to_k", "to_v"):
                names.add(f"{name}.{child}")
    return names


def _in_transformer(name: str) -> bool:
    return ".transformer_blocks." in name or name.endswith((".proj_in", ".proj_out"))


def quantize_unet(unet: torch.nn.Module) -> int:
    """Replace the linear layers of ``unet``'s transformer blocks with :class:`Fp8Linear`.

    Only layers whose sizes are multiples of 16 qualify (fp8 tensor cores need them), and the
    per-timestep embedding layers stay as they are: they multiply one row per image, where fp8
    saves nothing. Returns how many layers were replaced.

    Example:
        >>> import torch
        >>> class Block(torch.nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(32, 32)])
        >>> net = torch.nn.Sequential(Block())
        >>> quantize_unet(net)
        1

    """
    skip = _copied_into_fused(unet)
    chosen = [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name not in skip
        and _in_transformer(name)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    ]
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name), child, Fp8Linear.from_linear(linear))
    return len(chosen)


def fp8_unsupported(device: str | torch.device) -> str | None:
    """Why fp8 products cannot run on ``device`` with this torch, or ``None`` if they can.

    CUDA needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); the CPU runs them
    (slowly) so the numerics can be checked anywhere.

    Example:
        >>> fp8_unsupported("mps")
        'fp8 runs on NVIDIA GPUs with fp8 tensor cores (and on the CPU for checking), not on mps'

    """
    where = torch.device(device)
    if where.type not in ("cuda", "cpu"):
        return (
            "fp8 runs on NVIDIA GPUs with fp8 tensor cores (and on the CPU for checking), "
            f"not on {where.type}"
        )
    if where.type == "cuda":
        major, minor = torch.cuda.get_device_capability(where)
        if (major, minor) < (8, 9):
            name = torch.cuda.get_device_name(where)
            return (
                f"{name} (compute capability {major}.{minor}) has no fp8 tensor cores; fp8 needs "
                "8.9 or newer (Ada, Hopper, Blackwell): use quantize='none'"
            )
    probe: Any = torch.ones(16, 16, device=where)
    try:
        Fp8Linear(probe, None).to(where)(probe.to(torch.bfloat16))
    except (RuntimeError, NotImplementedError) as e:
        return (
            f"torch {torch.__version__} cannot run row-scaled fp8 products on {where} "
            f"({first_line(e)}); "
            "upgrade torch or use quantize='none'"
        )
    return None

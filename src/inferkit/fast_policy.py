"""The fast policy: the default placement plus compilation, CUDA graphs and faster layouts.

:class:`FastPolicy` makes the same device and precision decisions as :class:`DevicePolicy` and then
speeds the networks up with well-kept PyTorch and diffusers tools, each of which can be turned off:

* fused QKV projections (one matrix product instead of three in every self-attention);
* channels-last memory layout for the convolutions;
* ``torch.compile`` of the UNet (``"full"``: the whole network and the VAE decoder;
  ``"regional"``: only the repeated transformer blocks, which compiles several times faster),
  with a persistent compile cache so a second process starts in seconds;
* CUDA graphs (:mod:`inferkit._cuda_graphs`) for the UNet step and the VAE decode, which remove
  the kernel-launch overhead that dominates a UNet step on a fast GPU;
* opt-in fp8 (``quantize="fp8"``, :mod:`inferkit.fp8`): the UNet's transformer linear layers
  multiply in float8 on GPUs with fp8 tensor cores, trading a stated loss of precision for speed
  and memory.

Every decision lands in :attr:`ExecutionPlan.reasons`, and so in each result.

Example:
    >>> import inferkit
    >>> plan = inferkit.FastPolicy(device="cpu", compile="none").plan()
    >>> plan.reasons[-1]
    'fast: fused QKV, channels-last; no torch.compile (compile=none); no CUDA graphs on cpu'

"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from inferkit._cuda_graphs import GraphedCall
from inferkit.errors import InvalidParameterError
from inferkit.policy import (
    DevicePolicy,
    ExecutionPlan,
    _check_batch,
    _check_device,
    _check_dtype,
    next_memory_fallback,
)

__all__ = ["COMPILE_MODES", "QUANTIZE_MODES", "FastPolicy", "compile_cache_dir"]

# torch itself sets this variable once inductor is imported, so read the user's choice early.
_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

COMPILE_MODES: tuple[str, ...] = ("full", "regional", "none")
"""What :attr:`FastPolicy.compile` accepts."""

QUANTIZE_MODES: tuple[str, ...] = ("none", "fp8")
"""What :attr:`FastPolicy.quantize` accepts."""


def compile_cache_dir() -> Path:
    """Where compiled kernels are kept between processes unless ``cache_dir`` says otherwise.

    ``$INFERKIT_CACHE/torch-compile`` if set, else ``$XDG_CACHE_HOME/inferkit/torch-compile``,
    else ``~/.cache/inferkit/torch-compile``.

    Example:
        >>> compile_cache_dir().name
        'torch-compile'

    """
    root = os.environ.get("INFERKIT_CACHE")
    if root:
        return Path(root) / "torch-compile"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "inferkit" / "torch-compile"


def _check_compile(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in COMPILE_MODES:
        raise InvalidParameterError(attribute.name, value, f"must be one of {COMPILE_MODES}")


def _check_quantize(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in QUANTIZE_MODES:
        raise InvalidParameterError(attribute.name, value, f"must be one of {QUANTIZE_MODES}")


def _check_bool(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidParameterError(attribute.name, value, "must be True or False")


def _check_cache_dir(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise InvalidParameterError(attribute.name, value, "must be a folder path or None")


@attrs.frozen(kw_only=True)
class FastPolicy:
    """Place the model like :class:`DevicePolicy`, then compile and graph it for speed.

    Images stay close to the default path's (same weights, same sampler, same noise), but not
    bit-identical: fused and compiled kernels round differently. ``docs/policy.md`` states the
    tolerances the tests and the GPU benchmark check.

    Attributes:
        device: as for :class:`DevicePolicy`.
        dtype: as for :class:`DevicePolicy` (``"auto"``: bfloat16 on GPUs that have it).
        vae_dtype: as for :class:`DevicePolicy`.
        max_batch: as for :class:`DevicePolicy`.
        compile: ``"full"`` (UNet and VAE decoder), ``"regional"`` (the UNet's repeated
            transformer blocks: most of the gain, a fraction of the compile time) or ``"none"``.
        cuda_graphs: record the text encoders, the UNet step and the VAE decode as CUDA graphs
            (CUDA devices only).
        channels_last: convert the UNet (and, when compiled in full, the VAE) to channels-last
            memory layout.
        fuse_qkv: fuse the attention projections of UNet and VAE.
        cache_dir: folder for the persistent compile cache (default: ``TORCHINDUCTOR_CACHE_DIR``
            if it was set when inferkit was imported, else :func:`compile_cache_dir`).
        tune_kernels: let the compiler search kernel configurations and treat 1x1
            convolutions as matrix products (inductor's coordinate-descent tuning): a longer
            first compile for faster kernels. Applies to every later compile in the process.
        precompile: with ``compile="full"``, keep each compiled network whole in the cache
            (torch's experimental ahead-of-time entry point), so a new process loads it
            without tracing the Python code again; where this torch lacks it, compile in the
            process with a warning.
        quantize: ``"fp8"`` stores the weights of the UNet's transformer linear layers in
            float8 (e4m3, one scale per output channel) and multiplies them with inputs scaled
            into float8 row by row: less memory and faster products on GPUs with fp8 tensor
            cores (compute capability 8.9+), at a measured loss of precision stated in
            ``docs/policy.md``. The CPU runs it too, slowly, to check the numerics. Default
            ``"none"``.

    Example:
        >>> import inferkit
        >>> inferkit.FastPolicy(device="cpu", compile="none").plan().device
        'cpu'

    """

    device: str = attrs.field(default="auto", validator=_check_device)
    dtype: str | torch.dtype = attrs.field(default="auto", validator=_check_dtype)
    vae_dtype: str | torch.dtype = attrs.field(default="auto", validator=_check_dtype)
    max_batch: int = attrs.field(default=1, validator=_check_batch)
    compile: str = attrs.field(default="full", validator=_check_compile)
    cuda_graphs: bool = attrs.field(default=True, validator=_check_bool)
    channels_last: bool = attrs.field(default=True, validator=_check_bool)
    fuse_qkv: bool = attrs.field(default=True, validator=_check_bool)
    cache_dir: str | os.PathLike[str] | None = attrs.field(default=None, validator=_check_cache_dir)
    tune_kernels: bool = attrs.field(default=False, validator=_check_bool)
    quantize: str = attrs.field(default="none", validator=_check_quantize)
    precompile: bool = attrs.field(default=True, validator=_check_bool)

    def _base(self) -> DevicePolicy:
        return DevicePolicy(
            device=self.device, dtype=self.dtype, vae_dtype=self.vae_dtype, max_batch=self.max_batch
        )

    def _summary(self, device: str) -> str:
        parts = []
        if self.fuse_qkv:
            parts.append("fused QKV")
        if self.channels_last:
            parts.append("channels-last")
        if self.quantize == "fp8":
            parts.append("fp8 transformer linear layers (e4m3, per-channel and per-row scales)")
        done = ", ".join(parts) or "no layout changes"
        if self.compile == "none":
            compiled = "no torch.compile (compile=none)"
        else:
            tuned = ", tuned kernels" if self.tune_kernels else ""
            kept = ""
            if self.compile == "full" and self.precompile:
                from inferkit._precompile import precompile_supported

                kept = (
                    ", kept whole for new processes"
                    if precompile_supported()
                    else f", not kept whole (torch {torch.__version__} cannot)"
                )
            compiled = f"torch.compile {self.compile}{tuned}{kept} (cache {self._cache_path()})"
        if torch.device(device).type != "cuda":
            graphs = f"no CUDA graphs on {device}"
        elif self.cuda_graphs:
            graphs = "CUDA graphs for text encoders, UNet step and VAE decode"
        else:
            graphs = "no CUDA graphs (cuda_graphs=False)"
        return f"fast: {done}; {compiled}; {graphs}"

    def _cache_path(self) -> str:
        if self.cache_dir is not None:
            return os.fspath(self.cache_dir)
        return _USER_CACHE_DIR or str(compile_cache_dir())

    def plan(self) -> ExecutionPlan:
        """Decide device and dtype as :class:`DevicePolicy` does; record the speed-ups.

        Raises :class:`~inferkit.InvalidParameterError` (naming ``quantize``) when fp8 was
        asked for and the chosen device or this torch cannot run it, before any weights load.
        """
        plan = self._base().plan()
        if self.quantize == "fp8":
            from inferkit.fp8 import fp8_unsupported

            reason = fp8_unsupported(plan.device)
            if reason is not None:
                raise InvalidParameterError("quantize", "fp8", reason)
        return attrs.evolve(plan, reasons=(*plan.reasons, self._summary(plan.device)))

    def finalize(self, plan: ExecutionPlan, vae_config: Mapping[str, Any]) -> ExecutionPlan:
        """Pick the VAE's dtype as :class:`DevicePolicy` does."""
        return self._base().finalize(plan, vae_config)

    def on_out_of_memory(self, pipeline: Any, plan: ExecutionPlan) -> ExecutionPlan | None:
        """Fall back to VAE tiling only: offloading would move weights under the CUDA graphs."""
        return next_memory_fallback(pipeline, plan, allow_offload=False)

    def apply(self, pipeline: Any, plan: ExecutionPlan) -> None:
        """Place the pipeline, then fuse, convert, compile and graph its UNet and VAE."""
        self._base().apply(pipeline, plan)
        unet, vae = pipeline.unet, pipeline.vae
        if self.fuse_qkv:
            unet.fuse_qkv_projections()
            vae.fuse_qkv_projections()
        if self.quantize == "fp8":
            from inferkit.fp8 import quantize_unet

            quantize_unet(unet)  # after fusing: the fused layers are the ones that run
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
            if self.compile == "full":
                # Eager GroupNorm is slower on channels-last tensors; compiled code fuses it.
                vae.to(memory_format=torch.channels_last)
        on_cuda = torch.device(plan.device).type == "cuda"
        if on_cuda:
            torch.backends.cudnn.benchmark = True
        unet_forward = unet.forward
        decoder_forward = vae.decoder.forward
        if self.compile != "none":
            _enable_compile_cache(self._cache_path())
            if self.tune_kernels:
                _tune_kernels()
        if self.compile == "full" and self.precompile:
            from inferkit._precompile import PrecompiledCall

            extra = f"tune={self.tune_kernels}"
            unet_forward = PrecompiledCall(unet, self._cache_path(), extra=extra)
            decoder_forward = PrecompiledCall(vae.decoder, self._cache_path(), extra=extra)
            vae.decoder.forward = decoder_forward
        elif self.compile == "full":
            unet_forward = torch.compile(unet_forward, fullgraph=True, dynamic=False)
            decoder_forward = torch.compile(decoder_forward, fullgraph=True, dynamic=False)
            vae.decoder.forward = decoder_forward
        elif self.compile == "regional":
            if not getattr(unet, "_repeated_blocks", None):
                import diffusers

                raise InvalidParameterError(
                    "compile",
                    "regional",
                    f"needs diffusers >= 0.35 (this is {diffusers.__version__}), whose UNet "
                    "names its repeated blocks; upgrade diffusers or use compile='full'",
                )
            unet.compile_repeated_blocks(fullgraph=True, dynamic=False)
        if on_cuda and self.cuda_graphs:
            unet.forward = GraphedCall(unet_forward)
            vae.decode = GraphedCall(vae.decode)
            for name in ("text_encoder", "text_encoder_2"):
                encoder = getattr(pipeline, name, None)
                if encoder is not None:
                    encoder.forward = GraphedCall(encoder.forward)
        elif self.compile == "full":
            unet.forward = unet_forward


def _enable_compile_cache(folder: str) -> None:
    """Keep compiled graphs and kernels in ``folder`` so later processes reuse them."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidParameterError(
            "cache_dir", folder, f"cannot be created ({e.strerror or e}); pass a writable folder"
        ) from e
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config = getattr(torch, "_functorch", None)
    if functorch_config is not None and hasattr(functorch_config.config, "enable_autograd_cache"):
        functorch_config.config.enable_autograd_cache = True
    # Each distinct block shape of a regionally compiled UNet is one more cache entry.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)


def _tune_kernels() -> None:
    import torch._inductor.config as inductor_config

    inductor_config.conv_1x1_as_mm = True
    inductor_config.coordinate_descent_tuning = True
    inductor_config.coordinate_descent_check_all_directions = True
    inductor_config.epilogue_fusion = False

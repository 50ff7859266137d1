"""Device and precision policy: which device, which dtype, VAE precision, memory strategy.

A policy knows hardware; it does not know files. :meth:`Model.load` asks the policy for an
:class:`ExecutionPlan` before loading (so weights load straight into the chosen dtype), asks it
for the VAE's dtype once the model is known, then lets it place the pipeline. Every decision and
the reason for it are recorded in the plan, and the plan lands in each result.

Example:
    >>> import inferkit
    >>> plan = inferkit.DevicePolicy(device="cpu").plan()
    >>> plan.device, plan.dtype_name
    ('cpu', 'float32')

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from inferkit.errors import DeviceUnavailableError, InvalidParameterError

__all__ = [
    "MEMORY_STRATEGIES",
    "DevicePolicy",
    "ExecutionPlan",
    "Policy",
    "dtype_name",
    "next_memory_fallback",
]

MEMORY_STRATEGIES: tuple[str, ...] = (
    "model_offload",
    "sequential_offload",
    "vae_tiling",
    "attention_slicing",
)
"""Memory strategies a :class:`DevicePolicy` can apply (``()`` means none)."""

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """Return ``"float16"`` for ``torch.float16`` and so on.

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'

    """
    return str(dtype).removeprefix("torch.")


def _parse_dtype(value: str | torch.dtype) -> torch.dtype | None:
    if isinstance(value, torch.dtype):
        if value not in _DTYPES.values():
            raise InvalidParameterError("dtype", value, "must be float32, float16 or bfloat16")
        return value
    if value == "auto":
        return None
    if value not in _DTYPES:
        raise InvalidParameterError(
            "dtype", value, "must be 'auto', 'float32', 'float16' or 'bfloat16' (or a torch dtype)"
        )
    return _DTYPES[value]


def _check_dtype(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (str, torch.dtype)):
        raise InvalidParameterError(attribute.name, value, "must be 'auto' or a dtype name")
    try:
        _parse_dtype(value)
    except InvalidParameterError as e:
        raise InvalidParameterError(attribute.name, value, e.allowed) from None


def _check_device(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, torch.device):
        return
    if not isinstance(value, str):
        raise InvalidParameterError(attribute.name, value, "must be 'auto' or a device string")
    if value == "auto":
        return
    try:
        torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise InvalidParameterError(
            attribute.name, value, "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from e


def _to_memory(value: object) -> tuple[str, ...]:
    if value is None or value == "none":
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise InvalidParameterError("memory", value, "must be a strategy name or a tuple of them")


def _check_memory(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        if item not in MEMORY_STRATEGIES:
            raise InvalidParameterError(
                "memory", item, f"must be one of {', '.join(MEMORY_STRATEGIES)} (or 'none')"
            )
    if "model_offload" in value and "sequential_offload" in value:
        raise InvalidParameterError(
            "memory", value, "choose one of model_offload and sequential_offload"
        )


def _check_batch(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidParameterError(attribute.name, value, "must be an integer >= 1")


@attrs.frozen(kw_only=True)
class ExecutionPlan:
    """The decisions a policy made for one model, with a reason for each.

    Attributes:
        device: where the networks run (``"cpu"``, ``"cuda:0"``, ``"mps"``).
        dtype: the dtype of UNet and text encoders.
        vae_dtype: the dtype of the VAE (may be float32 while ``dtype`` is float16).
        memory: memory strategies applied.
        max_batch: most images denoised together in one UNet batch.
        reasons: one line per decision.

    Example:
        >>> import inferkit
        >>> inferkit.DevicePolicy(device="cpu").plan().reasons[0]
        "device 'cpu' as requested"

    """

    device: str
    dtype: torch.dtype
    vae_dtype: torch.dtype
    memory: tuple[str, ...] = ()
    max_batch: int = 1
    reasons: tuple[str, ...] = ()

    @property
    def dtype_name(self) -> str:
        """The dtype as a plain string (``"float32"``)."""
        return dtype_name(self.dtype)

    @property
    def vae_dtype_name(self) -> str:
        """The VAE's dtype as a plain string."""
        return dtype_name(self.vae_dtype)


@runtime_checkable
class Policy(Protocol):
    """What :meth:`Model.load` needs from a policy. Replace it by any object with these methods.

    Example:
        >>> import inferkit
        >>> isinstance(inferkit.DevicePolicy(), inferkit.Policy)
        True

    """

    def plan(self) -> ExecutionPlan:
        """Decide device, dtype and memory strategy before any weights are loaded."""
        ...

    def finalize(self, plan: ExecutionPlan, vae_config: Mapping[str, Any]) -> ExecutionPlan:
        """Refine the plan once the model is known (e.g. upcast a VAE that overflows in fp16)."""
        ...

    def apply(self, pipeline: Any, plan: ExecutionPlan) -> None:
        """Place a diffusers pipeline on the plan's device and apply its memory strategies."""
        ...

    # Optional: ``on_out_of_memory(pipeline, plan) -> ExecutionPlan | None`` applies a memory
    # fallback after an out-of-memory error and returns the new plan (None: give up).


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


def _native_bf16(device: str) -> bool:
    """Whether the GPU computes bfloat16 natively (Ampere, compute capability 8.0, or newer).

    ``torch.cuda.is_bf16_supported()`` also says yes for emulated bfloat16 on older cards, which
    is slow there.
    """
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def _mps_ok() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@attrs.frozen(kw_only=True)
class DevicePolicy:
    """The default policy: best available device, its best dtype, safe VAE precision.

    Attributes:
        device: ``"auto"`` (cuda, then mps, then cpu) or a device such as ``"cuda:1"``.
        dtype: ``"auto"`` (bfloat16 on GPUs that support it, else float16; float32 on CPU) or a
            dtype name.
        vae_dtype: ``"auto"`` (float32 when the model's VAE is marked to overflow in float16, as
            SDXL's is; otherwise ``dtype``) or a dtype name.
        memory: memory strategies: ``"model_offload"``, ``"sequential_offload"`` (both need a
            GPU and the ``accelerate`` package), ``"vae_tiling"``, ``"attention_slicing"``.
        max_batch: most images denoised together. The default, 1, makes every image's pixels
            independent of how many images share a call (kernels round differently for
            different batch sizes); larger values trade that exactness for GPU throughput.

    Example:
        >>> import inferkit
        >>> inferkit.DevicePolicy(device="cpu", memory="vae_tiling").plan().memory
        ('vae_tiling',)

    """

    device: str = attrs.field(default="auto", validator=_check_device)
    dtype: str | torch.dtype = attrs.field(default="auto", validator=_check_dtype)
    vae_dtype: str | torch.dtype = attrs.field(default="auto", validator=_check_dtype)
    memory: tuple[str, ...] = attrs.field(default=(), converter=_to_memory, validator=_check_memory)
    max_batch: int = attrs.field(default=1, validator=_check_batch)

    def _device(self) -> tuple[str, str]:
        requested = str(self.device)
        if requested == "auto":
            if _cuda_ok():
                return "cuda", "device 'cuda' chosen: a CUDA GPU is available"
            if _mps_ok():
                return "mps", "device 'mps' chosen: Apple GPU available, no CUDA"
            return "cpu", "device 'cpu' chosen: no CUDA or MPS GPU found"
        kind = torch.device(requested).type
        if kind == "cuda" and not _cuda_ok():
            raise DeviceUnavailableError(
                f"device={requested!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        index = torch.device(requested).index
        if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device={requested!r} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        if kind == "mps" and not _mps_ok():
            raise DeviceUnavailableError(
                f"device={requested!r} was requested but MPS is not available; use 'cpu' or 'auto'"
            )
        if kind not in {"cpu", "cuda", "mps"}:
            raise DeviceUnavailableError(
                f"device={requested!r} is not supported; use 'cpu', 'cuda' or 'mps'"
            )
        return requested, f"device {requested!r} as requested"

    def plan(self) -> ExecutionPlan:
        """Decide device and dtype; the VAE follows ``dtype`` until :meth:`finalize`."""
        device, device_reason = self._device()
        kind = torch.device(device).type
        dtype = _parse_dtype(self.dtype)
        if dtype is not None:
            dtype_reason = f"dtype {dtype_name(dtype)} as requested"
        elif kind == "cuda":
            dtype = torch.bfloat16 if _native_bf16(device) else torch.float16
            dtype_reason = f"dtype {dtype_name(dtype)}: best half precision this GPU supports"
        elif kind == "mps":
            dtype, dtype_reason = torch.float16, "dtype float16: the usual precision on MPS"
        else:
            dtype, dtype_reason = torch.float32, "dtype float32: half precision is slow on CPUs"
        if kind == "cpu" and dtype == torch.float16:
            dtype_reason += " (float16 on CPU is slow and may overflow; float32 is recommended)"
        offload = {"model_offload", "sequential_offload"} & set(self.memory)
        if offload and kind != "cuda":
            raise DeviceUnavailableError(
                f"memory strategy {sorted(offload)[0]!r} moves weights between CPU and a GPU, "
                f"but the device is {device!r}; drop it or use a CUDA device"
            )
        reasons = [device_reason, dtype_reason]
        if self.memory:
            reasons.append(f"memory strategies {', '.join(self.memory)} as requested")
        if self.max_batch == 1:
            reasons.append("max_batch 1: each image is denoised alone, so batches are bit-exact")
        else:
            reasons.append(f"max_batch {self.max_batch}: images are denoised in batches")
        return ExecutionPlan(
            device=device,
            dtype=dtype,
            vae_dtype=dtype,
            memory=self.memory,
            max_batch=self.max_batch,
            reasons=tuple(reasons),
        )

    def finalize(self, plan: ExecutionPlan, vae_config: Mapping[str, Any]) -> ExecutionPlan:
        """Pick the VAE's dtype: as requested, or float32 for VAEs that overflow in float16."""
        requested = _parse_dtype(self.vae_dtype)
        if requested is not None:
            reason = f"VAE dtype {dtype_name(requested)} as requested"
            vae_dtype = requested
        elif plan.dtype == torch.float16 and vae_config.get("force_upcast", False):
            vae_dtype = torch.float32
            reason = "VAE dtype float32: this VAE overflows in float16 (force_upcast in its config)"
        else:
            vae_dtype = plan.dtype
            reason = f"VAE dtype {dtype_name(vae_dtype)}: same as the model"
        return attrs.evolve(plan, vae_dtype=vae_dtype, reasons=(*plan.reasons, reason))

    def on_out_of_memory(self, pipeline: Any, plan: ExecutionPlan) -> ExecutionPlan | None:
        """Apply the next memory fallback after an out-of-memory error; None when none is left.

        First VAE tiling (decoding in tiles needs far less memory), then, on CUDA, offloading
        each network to the CPU while it is not in use. The returned plan records the change;
        the model keeps it for later calls.
        """
        return next_memory_fallback(pipeline, plan, allow_offload=True)

    def apply(self, pipeline: Any, plan: ExecutionPlan) -> None:
        """Move the pipeline to the device and apply the memory strategies."""
        if "model_offload" in plan.memory or "sequential_offload" in plan.memory:
            try:
                import accelerate  # noqa: F401
            except ImportError as e:
                raise DeviceUnavailableError(
                    "CPU offload needs the 'accelerate' package: pip install accelerate"
                ) from e
            if "model_offload" in plan.memory:
                pipeline.enable_model_cpu_offload(device=plan.device)
            else:
                pipeline.enable_sequential_cpu_offload(device=plan.device)
        elif any(
            t.device != torch.device(plan.device)
            for m in pipeline.components.values()
            if isinstance(m, torch.nn.Module)
            for t in (*m.parameters(), *m.buffers())
        ):
            pipeline.to(plan.device)
        if pipeline.vae.dtype != plan.vae_dtype:
            pipeline.vae.to(dtype=plan.vae_dtype)
        if "vae_tiling" in plan.memory:
            pipeline.vae.enable_tiling()
        if "attention_slicing" in plan.memory:
            pipeline.enable_attention_slicing()


def next_memory_fallback(
    pipeline: Any, plan: ExecutionPlan, *, allow_offload: bool
) -> ExecutionPlan | None:
    """Enable the next memory strategy on ``pipeline`` and return the plan that records it.

    Example:
        >>> import inferkit
        >>> m = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"), device="cpu")
        >>> next_memory_fallback(m.pipeline, m.plan, allow_offload=True).memory
        ('vae_tiling',)

    """
    from inferkit._cuda_graphs import forget_graphs

    if "vae_tiling" not in plan.memory:
        pipeline.vae.enable_tiling()
        forget_graphs(pipeline.vae)  # a graph recorded untiled would replay untiled
        added = "vae_tiling"
    elif (
        allow_offload
        and torch.device(plan.device).type == "cuda"
        and not {"model_offload", "sequential_offload"} & set(plan.memory)
    ):
        pipeline.enable_model_cpu_offload(device=plan.device)
        added = "model_offload"
    else:
        return None
    reason = f"memory strategy {added} added after the device ran out of memory"
    return attrs.evolve(plan, memory=(*plan.memory, added), reasons=(*plan.reasons, reason))

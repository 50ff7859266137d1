"""The device/precision policy: decisions, reasons, VAE precision, memory strategies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

import inferkit


def test_auto_on_a_cpu_machine_is_cpu_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no GPU, auto means CPU in float32, and the plan says why."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    plan = inferkit.DevicePolicy().plan()
    assert (plan.device, plan.dtype) == ("cpu", torch.float32)
    assert "no CUDA or MPS" in plan.reasons[0]


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16)],
)
def test_auto_on_cuda_prefers_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype
) -> None:
    """On CUDA, auto picks bfloat16 on cards that compute it natively (Ampere+), else float16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    plan = inferkit.DevicePolicy().plan()
    assert (plan.device, plan.dtype) == ("cuda", expected)


def test_missing_cuda_index_is_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:7 on a one-GPU machine is refused with the valid range."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(inferkit.DeviceUnavailableError, match="cuda:0"):
        inferkit.DevicePolicy(device="cuda:7").plan()


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    """MPS is chosen when there is no CUDA but Apple's GPU is there, in float16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    plan = inferkit.DevicePolicy().plan()
    assert (plan.device, plan.dtype) == ("mps", torch.float16)


def test_fp16_vae_that_overflows_is_upcast() -> None:
    """A VAE marked force_upcast (SDXL's) runs in float32 when the model is float16."""
    policy = inferkit.DevicePolicy(device="cpu", dtype="float16")
    plan = policy.finalize(policy.plan(), {"force_upcast": True})
    assert (plan.dtype, plan.vae_dtype) == (torch.float16, torch.float32)
    assert "overflows" in plan.reasons[-1]
    same = policy.finalize(policy.plan(), {"force_upcast": False})
    assert same.vae_dtype == torch.float16


def test_explicit_vae_dtype_wins() -> None:
    """vae_dtype given explicitly is used as is."""
    policy = inferkit.DevicePolicy(device="cpu", dtype="float16", vae_dtype="bfloat16")
    assert policy.finalize(policy.plan(), {"force_upcast": True}).vae_dtype == torch.bfloat16


def test_sdxl_fp16_model_decodes_with_fp32_vae(tiny_paths: dict[str, Path]) -> None:
    """End to end: an SDXL model loaded in float16 keeps its VAE in float32 and records it."""
    with inferkit.Model.load(tiny_paths["sdxl"], device="cpu", dtype="float16") as model:
        assert model.pipeline.vae.dtype == torch.float32
        result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert (result.params.dtype, result.params.vae_dtype) == ("float16", "float32")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"memory": "turbo"}, "memory"),
        ({"memory": ("model_offload", "sequential_offload")}, "memory"),
        ({"dtype": "int8"}, "dtype"),
        ({"vae_dtype": 3}, "vae_dtype"),
        ({"device": "gpu0"}, "device"),
        ({"max_batch": 0}, "max_batch"),
    ],
)
def test_invalid_policy_settings_name_the_setting(kwargs: dict[str, Any], name: str) -> None:
    """Bad policy settings raise InvalidParameterError naming the setting."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.DevicePolicy(**kwargs)
    assert e.value.name == name


def test_offload_needs_a_gpu() -> None:
    """CPU offload on a CPU device is refused with an explanation."""
    with pytest.raises(inferkit.DeviceUnavailableError, match="CUDA"):
        inferkit.DevicePolicy(device="cpu", memory="model_offload").plan()


def test_vae_tiling_and_attention_slicing_are_applied(sd1_path: Path) -> None:
    """Memory strategies are applied to the pipeline and recorded in the result."""
    policy = inferkit.DevicePolicy(memory=("vae_tiling", "attention_slicing"))
    with inferkit.Model.load(sd1_path, policy=policy) as model:
        assert model.pipeline.vae.use_tiling
        result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert result.params.memory == ("vae_tiling", "attention_slicing")
    assert result.model.memory == ("vae_tiling", "attention_slicing")


def test_policy_decisions_land_in_the_result(sd1: inferkit.Model) -> None:
    """Every decision's reason is in the result's model info."""
    info = sd1.infer("a cat", steps=1, seed=1, progress=False).model
    assert any(r.startswith("device") for r in info.decisions)
    assert any(r.startswith("VAE dtype") for r in info.decisions)


@attrs.frozen
class LoggingPolicy:
    """A user policy: wraps the default one and records what it was asked."""

    inner: inferkit.DevicePolicy = attrs.field(
        factory=lambda: inferkit.DevicePolicy(device="cpu", dtype="bfloat16")
    )
    calls: list[str] = attrs.field(factory=list)

    def plan(self) -> inferkit.ExecutionPlan:
        self.calls.append("plan")
        return self.inner.plan()

    def finalize(self, plan: inferkit.ExecutionPlan, vae_config: Any) -> inferkit.ExecutionPlan:
        self.calls.append("finalize")
        return attrs.evolve(plan, vae_dtype=torch.float32, reasons=(*plan.reasons, "custom vae"))

    def apply(self, pipeline: Any, plan: inferkit.ExecutionPlan) -> None:
        self.calls.append("apply")
        self.inner.apply(pipeline, plan)


def test_users_can_replace_the_policy(sd1_path: Path) -> None:
    """Any object with plan/finalize/apply is a policy; its decisions are used and recorded."""
    policy = LoggingPolicy()
    with inferkit.Model.load(sd1_path, policy=policy) as model:
        result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert policy.calls == ["plan", "finalize", "apply"]
    assert (result.params.dtype, result.params.vae_dtype) == ("bfloat16", "float32")
    assert "custom vae" in result.model.decisions


def test_device_argument_with_a_custom_policy_is_refused(sd1_path: Path) -> None:
    """device= alongside a non-default policy is ambiguous and refused."""
    with pytest.raises(inferkit.InvalidParameterError, match="policy"):
        inferkit.Model.load(sd1_path, policy=LoggingPolicy(), device="cpu")


def test_device_argument_refines_a_device_policy(sd1_path: Path) -> None:
    """device=/dtype= refine a DevicePolicy passed as policy=."""
    policy = inferkit.DevicePolicy(memory="vae_tiling")
    with inferkit.Model.load(sd1_path, policy=policy, dtype="bfloat16") as model:
        assert (model.info.dtype, model.info.memory) == ("bfloat16", ("vae_tiling",))

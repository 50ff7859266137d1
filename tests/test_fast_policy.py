"""FastPolicy: the speed-ups keep the default path's results, and it records what it did.

CUDA graphs and GPU timings are checked by benchmarks/gpu_suite.py on a GPU; these tests run the
parts that apply on a CPU (fused QKV, channels-last, torch.compile, the persistent cache).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inferkit
from checks import assert_same_shapes, rel_err, unet_step
from inferkit._cuda_graphs import GraphedCall


def test_fast_policy_records_each_speed_up_in_the_decisions(sd1_path: Path) -> None:
    """The plan says which speed-ups apply, and that CUDA graphs do not apply on a CPU."""
    policy = inferkit.FastPolicy(device="cpu", compile="none")
    model = inferkit.Model.load(sd1_path, policy=policy)
    decision = model.info.decisions[-2]
    assert decision.startswith("fast: fused QKV, channels-last; no torch.compile")
    assert "no CUDA graphs on cpu" in decision


def test_the_plan_says_whether_compiled_networks_are_kept_whole() -> None:
    """With compile="full" the decision says the compiled networks are kept for new
    processes, unless precompile=False."""
    from inferkit._precompile import precompile_supported

    kept = inferkit.FastPolicy(device="cpu").plan().reasons[-1]
    plain = inferkit.FastPolicy(device="cpu", precompile=False).plan().reasons[-1]
    expected = "kept whole for new processes" if precompile_supported() else "not kept whole"
    assert expected in kept
    assert "kept whole" not in plain


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("compile", "fastest"),
        ("cuda_graphs", "yes"),
        ("channels_last", 1),
        ("fuse_qkv", None),
        ("tune_kernels", "true"),
        ("quantize", "int8"),
        ("precompile", 1),
        ("cache_dir", 3),
        ("max_batch", 0),
        ("device", 7),
    ],
)
def test_fast_policy_rejects_bad_settings_by_name(field: str, value: object) -> None:
    """A bad setting is an InvalidParameterError that names the field."""
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.FastPolicy(**{field: value})  # type: ignore[arg-type]
    assert caught.value.name == field


def test_device_and_dtype_arguments_reach_a_fast_policy(sd1_path: Path) -> None:
    """Model.load(device=, dtype=) applies to a FastPolicy as it does to the default policy."""
    model = inferkit.Model.load(
        sd1_path, device="cpu", dtype="bfloat16", policy=inferkit.FastPolicy(compile="none")
    )
    assert (model.plan.device, model.plan.dtype_name) == ("cpu", "bfloat16")


def test_fused_channels_last_unet_step_matches_the_default_in_fp32(sd1_path: Path) -> None:
    """One UNet step with fused QKV and channels-last equals the default within fp32 rounding
    (relative L2 error under 1e-5)."""
    default = inferkit.Model.load(sd1_path, device="cpu")
    fast = inferkit.Model.load(sd1_path, policy=inferkit.FastPolicy(device="cpu", compile="none"))
    assert rel_err(unet_step(fast), unet_step(default)) < 1e-5


def test_shapes_model_draws_the_same_images_on_the_fast_path() -> None:
    """The embedded trained model gives the same judged shapes on both paths, with pixels
    within one level of 255 on average."""
    default = inferkit.Model.load("inferkit:shapes", device="cpu")
    fast = inferkit.Model.load(
        "inferkit:shapes", policy=inferkit.FastPolicy(device="cpu", compile="none")
    )
    prompts = [
        ("a red circle on a white background", "red", "circle"),
        ("a blue square on a black background", "blue", "square"),
    ]
    assert_same_shapes(default, fast, prompts, mean_levels=1.0)


_SECOND_PROCESS = """
import sys, torch, inferkit
sys.path.insert(0, {tests!r})
from checks import unet_step
policy = inferkit.FastPolicy(device="cpu", compile="full", cache_dir={cache!r})
model = inferkit.Model.load({model!r}, policy=policy)
out = unet_step(model)
call = model.pipeline.unet.forward
torch.save(out, {out!r})
print(call.loaded, call.saved)
"""


@pytest.mark.slow
def test_compiled_unet_matches_the_default_and_a_new_process_loads_it(
    sd1_path: Path, tmp_path: Path
) -> None:
    """compile="full" gives the default's UNet step within fp32 rounding and keeps the
    compiled UNet in the cache; a second process loads it instead of compiling (no file
    saved) and gets bit-identical numbers."""
    cache = tmp_path / "cache"
    default = inferkit.Model.load(sd1_path, device="cpu")
    fast = inferkit.Model.load(
        sd1_path, policy=inferkit.FastPolicy(device="cpu", compile="full", cache_dir=cache)
    )
    first = unet_step(fast)
    assert rel_err(first, unet_step(default)) < 1e-5
    assert "kept whole for new processes" in fast.info.decisions[-2]
    code = _SECOND_PROCESS.format(
        tests=str(Path(__file__).parent),
        cache=str(cache),
        model=str(sd1_path),
        out=str(tmp_path / "out.pt"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["1", "0"]  # loaded one, saved none
    assert torch.equal(torch.load(tmp_path / "out.pt"), first)


def test_graphed_call_runs_cpu_work_directly() -> None:
    """Without CUDA tensors nothing is recorded; the function's own result comes back."""
    call = GraphedCall(lambda x, scale=2: x * scale)
    out = call(torch.ones(3), scale=3)
    assert out.tolist() == [3.0, 3.0, 3.0]
    assert call.recorded == 0


def test_graphed_call_runs_directly_on_arguments_it_cannot_key() -> None:
    """An argument that cannot be part of a graph's signature makes the call run without a
    graph instead of failing or replaying a wrong one."""
    marker = object()
    call = GraphedCall(lambda x, obj: (x + 1, obj))
    out, seen = call(torch.ones(1), marker)
    assert out.tolist() == [2.0] and seen is marker
    assert call.recorded == 0

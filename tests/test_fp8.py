"""fp8 (FastPolicy(quantize="fp8")): products within e4m3's rounding, images that keep their
meaning, LoRA that still merges and restores exactly, and a clear refusal where fp8 cannot run.

The speed is measured by benchmarks/gpu_suite.py on a GPU with fp8 tensor cores; the CPU runs
the same fp8 arithmetic (slowly), so the numerics are checked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
import inferkit.testing
from checks import assert_same_shapes, raw_sha256, rel_err, unet_step
from inferkit.fp8 import FP8, Fp8Linear, fp8_unsupported

UNIT = 2.0**-4  # e4m3's relative rounding step: 3 mantissa bits, rounding to nearest
SUBNORMAL_STEP = 2.0**-9  # e4m3's spacing below its smallest normal number (2**-6)


def fp8_policy() -> inferkit.FastPolicy:
    return inferkit.FastPolicy(device="cpu", compile="none", quantize="fp8")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    blocks=st.integers(1, 4),
    outputs=st.sampled_from([16, 32]),
    seed=st.integers(0, 2**16),
    x_magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
    w_magnitude=st.sampled_from([1e-2, 1.0, 10.0]),
)
def test_each_fp8_product_is_within_e4m3_rounding_of_its_terms(
    rows: int, blocks: int, outputs: int, seed: int, x_magnitude: float, w_magnitude: float
) -> None:
    """Every output differs from the float32 product by no more than fp8 rounding of both
    operands (3 mantissa bits, subnormal spacing of the row's scale) and bfloat16 output
    rounding allow, at any magnitude of inputs and weights."""
    g = torch.Generator().manual_seed(seed)
    inputs = blocks * 16
    linear = torch.nn.Linear(inputs, outputs)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(outputs, inputs, generator=g) * w_magnitude)
        linear.bias.copy_(torch.randn(outputs, generator=g))
    x = torch.randn(rows, inputs, generator=g) * x_magnitude
    got = Fp8Linear.from_linear(linear)(x)
    with torch.no_grad():
        want = linear(x)
    max_float = torch.finfo(FP8).max
    sx = x.abs().amax(dim=1, keepdim=True) / max_float  # (rows, 1)
    sw = linear.weight.abs().amax(dim=1).detach() / max_float  # (outputs,)
    ax, aw = x.abs(), linear.weight.abs().detach()
    terms = ax @ aw.t()
    bound = (
        (2 * UNIT + UNIT**2) * terms
        + SUBNORMAL_STEP * (sx * aw.sum(dim=1) + sw * ax.sum(dim=1, keepdim=True)) * (1 + UNIT)
        + SUBNORMAL_STEP**2 * inputs * sx * sw
        + 2.0**-7 * (want.abs() + terms * 3 * UNIT + linear.bias.abs().detach())
    )
    assert bool(((got - want).abs() <= bound).all())


def test_a_row_of_zeros_gives_the_bias_without_dividing_by_zero() -> None:
    """An all-zero input row quantizes to zeros (no NaN from a zero scale): out = bias."""
    linear = torch.nn.Linear(32, 16).to(torch.bfloat16)
    out = Fp8Linear.from_linear(linear)(torch.zeros(3, 32, dtype=torch.bfloat16))
    assert torch.equal(out, linear.bias.detach().expand(3, 16))


def test_storing_a_dequantized_weight_gives_back_the_same_bits() -> None:
    """store_(dequantize()) is exact: re-quantizing what a layer stands for changes nothing,
    so merging a zero LoRA delta or restoring leaves the fp8 weights as they were."""
    layer = Fp8Linear.from_linear(torch.nn.Linear(64, 48))
    weight, scale = layer.weight.clone(), layer.weight_scale.clone()
    layer.store_(layer.dequantize())
    assert torch.equal(layer.weight.view(torch.uint8), weight.view(torch.uint8))
    assert torch.equal(layer.weight_scale, scale)


def test_casting_the_network_keeps_the_fp8_format() -> None:
    """network.to(float16 / bfloat16) leaves fp8 values and float32 scales as they were, so
    the layer still runs and gives the same products."""
    layer = Fp8Linear.from_linear(torch.nn.Linear(32, 16))
    weight, scale = layer.weight.clone(), layer.weight_scale.clone()
    x = torch.randn(4, 32)
    want = layer(x)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        layer.to(dtype)
        assert layer.weight.dtype == FP8 and layer.weight_scale.dtype == torch.float32
        assert torch.equal(layer.weight.view(torch.uint8), weight.view(torch.uint8))
        assert torch.equal(layer.weight_scale, scale)
    torch.testing.assert_close(layer(x), want, rtol=2**-7, atol=1e-2)


def test_fp8_converts_the_transformer_linear_layers_that_run(sd1_path: Path) -> None:
    """The fused attention projections, output projections and feed-forward layers become
    fp8; the q/k/v layers they were fused from and the timestep embeddings keep their dtype;
    the decision is recorded."""
    model = inferkit.Model.load(sd1_path, policy=fp8_policy())
    layers = dict(model.pipeline.unet.named_modules())
    fp8 = {name for name, m in layers.items() if isinstance(m, Fp8Linear)}
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    for suffix in ("attn1.to_qkv", "attn1.to_out.0", "attn2.to_q", "attn2.to_kv", "ff.net.2"):
        assert f"{block}.{suffix}" in fp8
    for suffix in ("attn1.to_q", "attn1.to_k", "attn2.to_v"):
        assert isinstance(layers[f"{block}.{suffix}"], torch.nn.Linear)
    assert isinstance(layers["time_embedding.linear_1"], torch.nn.Linear)
    assert all(layers[name].weight.dtype == FP8 for name in fp8)
    assert "fp8 transformer linear layers" in model.info.decisions[-2]


def test_fp8_unet_step_on_the_trained_model_is_close_to_float32() -> None:
    """On the embedded trained model one UNet step in fp8 is within 2% (relative L2) of the
    float32 step (measured: 0.75%; bfloat16 everywhere: 0.43%)."""
    default = inferkit.Model.load("inferkit:shapes", device="cpu")
    fp8 = inferkit.Model.load("inferkit:shapes", policy=fp8_policy())
    assert rel_err(unet_step(fp8), unet_step(default)) < 0.02


def test_fp8_unet_step_with_random_weights_stays_within_one_rounding_step(
    sd1_path: Path,
) -> None:
    """With random weights, where the transformer layers dominate, one UNet step is within
    e4m3's rounding step (2**-4 relative L2) of float32 (measured: 4.9%)."""
    default = inferkit.Model.load(sd1_path, device="cpu")
    fp8 = inferkit.Model.load(sd1_path, policy=fp8_policy())
    assert rel_err(unet_step(fp8), unet_step(default)) < UNIT


def test_the_trained_model_draws_the_same_shapes_in_fp8() -> None:
    """The embedded model's pictures in fp8 are judged the same colour and shape as the
    default path's, with pixels within 3 levels of 255 on average."""
    default = inferkit.Model.load("inferkit:shapes", device="cpu")
    fp8 = inferkit.Model.load("inferkit:shapes", policy=fp8_policy())
    prompts = [
        ("a red circle on a white background", "red", "circle"),
        ("a green triangle on a white background", "green", "triangle"),
    ]
    assert_same_shapes(default, fp8, prompts, mean_levels=3.0)


def test_fp8_is_refused_before_loading_where_it_cannot_run(
    sd1_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When this torch cannot run row-scaled fp8 products on the device, Model.load raises
    InvalidParameterError naming quantize, with the fix, before reading weights."""

    def unsupported(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("row-wise scaling is not supported on this device")

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a loader was chosen before fp8 was refused")

    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    monkeypatch.setattr(inferkit.model, "select_loader", no_loading)
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.Model.load(sd1_path, policy=fp8_policy())
    assert caught.value.name == "quantize"
    assert "use quantize='none'" in str(caught.value)
    assert "not supported on this device" in str(caught.value)


def test_fp8_names_the_devices_it_runs_on() -> None:
    """A device without fp8 products gets a reason that says where fp8 runs."""
    reason = fp8_unsupported("mps")
    assert reason is not None and "NVIDIA GPUs" in reason
    assert fp8_unsupported("cpu") is None


def picture(model: inferkit.Model) -> np.ndarray:
    result = model.infer("a red circle", steps=4, seed=1, progress=False)
    return np.asarray(result.images[0].image, dtype=np.int16)


def float_weight(unet: torch.nn.Module, name: str) -> torch.Tensor:
    """The float32 weight an fp8 layer of the fused model stands for, from an unfused model."""
    parent, _, child = name.rpartition(".")
    parts = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v")}.get(child, (child,))
    return torch.cat([unet.get_submodule(f"{parent}.{p}").weight.detach() for p in parts]).float()


def test_a_lora_merges_into_fp8_layers_and_the_base_comes_back_exactly(
    sd1_path: Path, tmp_path: Path
) -> None:
    """A LoRA on an fp8 model makes each fp8 layer stand for the float32 merged weight within
    two e4m3 rounding steps (the base was rounded once, the sum once more), changes the
    picture, and the base model's fp8 weights and scales come back bit for bit."""
    fp8 = inferkit.Model.load(sd1_path, policy=fp8_policy())
    full = inferkit.Model.load(sd1_path, device="cpu")
    path = inferkit.testing.write_lora(tmp_path, fp8, "kohya", text_encoder=False)
    before_hash, before = raw_sha256(fp8), picture(fp8)
    layers = [n for n, m in fp8.pipeline.unet.named_modules() if isinstance(m, Fp8Linear)]
    first = {n: fp8.pipeline.unet.get_submodule(n) for n in layers}
    first_scale = {n: m.weight_scale.clone() for n, m in first.items()}
    first_weight = {n: m.dequantize() for n, m in first.items()}
    unmerged = {n: float_weight(full.pipeline.unet, n) for n in layers}
    want = {n: float_weight(full.with_lora(path, 2.0).pipeline.unet, n) for n in layers}
    styled_model = fp8.with_lora(path, 2.0)
    styled = picture(styled_model)
    touched = 0
    for name in layers:
        layer = styled_model.pipeline.unet.get_submodule(name)
        assert isinstance(layer, Fp8Linear)
        got = layer.dequantize()
        # Each rounding is within UNIT of its value, or a subnormal step of its row's scale.
        allowed = (1 + UNIT) * (
            UNIT * (unmerged[name].abs() + want[name].abs())
            + SUBNORMAL_STEP * (first_scale[name] + layer.weight_scale)
        )
        assert bool(((got - want[name]).abs() <= allowed).all()), name
        delta = (want[name] - unmerged[name]).norm()
        if delta > 0:  # a layer the LoRA changes: its fp8 weight moved as far, roughly
            touched += 1
            assert (got - first_weight[name]).norm() > 0.5 * delta, name
    assert touched >= 3
    assert np.abs(styled - before).mean() > 5
    assert np.array_equal(picture(fp8), before)
    assert raw_sha256(fp8) == before_hash

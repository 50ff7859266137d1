"""Hostile files, weights that do not fit, numerical failure and out-of-memory: each gets a
typed error or a recorded recovery, nothing runs from a file, and nothing goes wrong silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import inferkit
import inferkit.testing
from inferkit.loaders import pickle_file

# --- pickles ------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _hostile_checkpoint(tmp_path: Path, suffix: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pwned{suffix}"
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {"w": torch.ones(2)}, "trap": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_is_refused_by_default_and_runs_nothing(tmp_path: Path, suffix: str) -> None:
    """A pickle checkpoint is refused before it is opened; the error explains the opt-in."""
    path, marker = _hostile_checkpoint(tmp_path, suffix)
    with pytest.raises(inferkit.UnsupportedModelError, match="allow_pickle=True") as caught:
        inferkit.Model.load(path)
    assert "safetensors" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_opted_in_pickle_is_read_weights_only_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force_unsafe: bool
) -> None:
    """With allow_pickle=True the restricted unpickler refuses the payload, even when
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks torch for full unpickling."""
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker = _hostile_checkpoint(tmp_path, ".ckpt")
    with pytest.raises(inferkit.UnsupportedModelError, match="weights-only pickle") as caught:
        inferkit.Model.load(path, allow_pickle=True)
    assert not marker.exists()
    assert caught.value.__cause__ is not None


def test_opted_in_pickle_of_real_weights_loads_the_same_model(tmp_path: Path) -> None:
    """An A1111-style .ckpt (a pickled {'state_dict': ...}) gives the same pixels as the
    .safetensors file it was converted from."""
    src = inferkit.testing.tiny_model_path("sd1")
    single = inferkit.testing.write_single_file(src, tmp_path / "m.safetensors")
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": load_file(str(single)), "global_step": 10}, ckpt)
    tok = src / "tokenizer"
    # A pickle has no metadata, so the native size (64 here) must be given.
    args: dict[str, Any] = {"steps": 2, "seed": 1, "width": 64, "height": 64, "progress": False}
    a = inferkit.Model.load(single, tokenizer=tok).infer("a cat", **args)
    b = inferkit.Model.load(ckpt, tokenizer=tok, allow_pickle=True).infer("a cat", **args)
    assert a.images[0].image.tobytes() == b.images[0].image.tobytes()


def test_pickles_are_refused_on_a_torch_with_known_unpickler_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch releases before 2.10 had bypasses of the weights-only unpickler; refuse them."""
    path, marker = _hostile_checkpoint(tmp_path, ".pt")
    monkeypatch.setattr(torch, "__version__", "2.9.1+cpu")
    with pytest.raises(inferkit.UnsupportedModelError, match=r"fixed in torch 2\.10"):
        inferkit.Model.load(path, allow_pickle=True)
    assert not marker.exists()
    assert not pickle_file.torch_is_safe_for_pickles("2.6.0")


# --- strict=False -------------------------------------------------------------------------------


def test_strict_false_records_missing_and_unexpected_weights(
    sd1_path: Path, tmp_path: Path
) -> None:
    """strict=False loads a folder with a missing and an extra weight, sets the missing one to
    zero, and says so in load_warnings and in every result's warnings."""
    folder = Path(shutil.copytree(sd1_path, tmp_path / "m"))
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    del tensors["conv_in.bias"]
    tensors["stray.weight"] = torch.ones(3)
    save_file(tensors, str(path))
    with pytest.raises(inferkit.UnsupportedModelError, match="strict=False"):
        inferkit.Model.load(folder)
    model = inferkit.Model.load(folder, strict=False)
    assert len(model.load_warnings) == 2
    assert "conv_in.bias" in model.load_warnings[0] and "set to zero" in model.load_warnings[0]
    assert "stray.weight" in model.load_warnings[1]
    assert torch.count_nonzero(model.pipeline.unet.conv_in.bias) == 0
    result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert [w for w in result.warnings if w.startswith("load: ")] == [
        f"load: {w}" for w in model.load_warnings
    ]


def test_strict_false_also_applies_to_single_files(tmp_path: Path) -> None:
    """A single file lacking a UNet weight loads with strict=False, with the warning."""
    src = inferkit.testing.tiny_model_path("sd1")
    single = inferkit.testing.write_single_file(src, tmp_path / "m.safetensors")
    tensors = load_file(str(single))
    del tensors["model.diffusion_model.out.2.bias"]
    save_file(tensors, str(single))
    with pytest.raises(inferkit.UnsupportedModelError, match="lacks 1 weights"):
        inferkit.Model.load(single, tokenizer=src / "tokenizer")
    model = inferkit.Model.load(single, tokenizer=src / "tokenizer", strict=False)
    assert "model.diffusion_model.out.2.bias" in model.load_warnings[0]


def test_strict_and_allow_pickle_must_be_booleans(sd1_path: Path) -> None:
    """The flags are checked before anything loads."""
    for name in ("strict", "allow_pickle", "verify"):
        with pytest.raises(inferkit.InvalidParameterError) as caught:
            inferkit.Model.load(sd1_path, **{name: "yes"})
        assert caught.value.name == name


# --- numerical guard ----------------------------------------------------------------------------


def _overflowing(sd1_path: Path, tmp_path: Path, component: str) -> Path:
    """A copy of the tiny model whose ``component`` overflows float16 but not float32: the
    first convolution is scaled by 1e5, and the GroupNorm right after it undoes the scale."""
    folder = Path(shutil.copytree(sd1_path, tmp_path / component))
    path = folder / component / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    prefix = "decoder.conv_in." if component == "vae" else "conv_in."
    for key in (prefix + "weight", prefix + "bias"):
        tensors[key] = tensors[key] * 1e5
    save_file(tensors, str(path))
    return folder


def test_vae_overflow_in_float16_is_decoded_again_in_float32(
    sd1_path: Path, tmp_path: Path
) -> None:
    """NaN pixels from a float16 VAE trigger a float32 decode and a warning; the image matches
    the one a float32 VAE gives."""
    folder = _overflowing(sd1_path, tmp_path, "vae")
    half = inferkit.Model.load(folder, device="cpu", dtype="float16")
    result = half.infer("a cat", steps=2, seed=1, progress=False)
    assert any("decoded again in float32" in w for w in result.warnings)
    policy = inferkit.DevicePolicy(device="cpu", dtype="float16", vae_dtype="float32")
    reference = inferkit.Model.load(folder, policy=policy).infer(
        "a cat", steps=2, seed=1, progress=False
    )
    assert not any("decoded again" in w for w in reference.warnings)
    a, b = (np.asarray(r.images[0].image, dtype=np.float64) for r in (result, reference))
    assert np.abs(a - b).max() <= 1


def test_non_finite_latents_raise_a_numerical_error_naming_the_step(
    sd1_path: Path, tmp_path: Path
) -> None:
    """A UNet that overflows in float16 stops the call with NumericalError (no NaN image),
    naming the first bad step and suggesting bfloat16; bfloat16 then works."""
    folder = _overflowing(sd1_path, tmp_path, "unet")
    half = inferkit.Model.load(folder, device="cpu", dtype="float16")
    with pytest.raises(inferkit.NumericalError, match="bfloat16") as caught:
        half.infer("a cat", steps=3, seed=1, progress=False)
    assert caught.value.step == 1 and caught.value.dtype == "float16"
    assert isinstance(caught.value, ArithmeticError)
    ok = inferkit.Model.load(folder, device="cpu", dtype="bfloat16")
    image = np.asarray(ok.infer("a cat", steps=3, seed=1, progress=False).images[0].image)
    assert np.isfinite(image).all()


# --- out of memory ------------------------------------------------------------------------------


def _fail_decode(model: inferkit.Model, times: int) -> list[int]:
    """Make the next ``times`` VAE decodes raise an out-of-memory error."""
    vae = model.pipeline.vae
    real = vae.decode
    calls = [0]

    def decode(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    vae.decode = decode
    return calls


def test_out_of_memory_is_retried_with_vae_tiling(sd1_path: Path) -> None:
    """An out-of-memory error makes the policy add VAE tiling and retry; the result and the
    model's plan record it."""
    model = inferkit.Model.load(sd1_path, device="cpu")
    _fail_decode(model, times=1)
    result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert model.plan.memory == ("vae_tiling",)
    assert result.params.memory == ("vae_tiling",)
    assert any(
        "ran out of memory; retried from the first step with vae_tiling" in w
        for w in result.warnings
    )
    assert "vae_tiling added after the device ran out of memory" in model.plan.reasons[-1]
    assert result.images[0].image.size == (64, 64)


def test_out_of_memory_after_every_fallback_is_a_typed_error(sd1_path: Path) -> None:
    """When no fallback is left (on a CPU: after tiling), DeviceOutOfMemoryError says what
    was tried and keeps the original error."""
    model = inferkit.Model.load(sd1_path, device="cpu")
    _fail_decode(model, times=10)
    with pytest.raises(inferkit.DeviceOutOfMemoryError, match="after trying vae_tiling") as caught:
        model.infer("a cat", steps=2, seed=1, progress=False)
    assert caught.value.tried == ("vae_tiling",)
    assert isinstance(caught.value, MemoryError)
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


# --- cache integrity ----------------------------------------------------------------------------


def test_verify_accepts_an_intact_cache_entry(hub_cache: Path, sd1_path: Path) -> None:
    """verify=True checks every blob against its name and loads an intact model."""
    inferkit.testing.write_hub_cache_entry(sd1_path, "acme/tiny", hub_cache)
    assert inferkit.Model.load("acme/tiny", verify=True).info.loader == "hub-cache"


@pytest.mark.parametrize("member", ["unet/diffusion_pytorch_model.safetensors", "unet/config.json"])
def test_verify_names_a_corrupted_blob(hub_cache: Path, sd1_path: Path, member: str) -> None:
    """One flipped byte in a cached file (sha256-named or git-named blob) is reported by name."""
    snapshot = inferkit.testing.write_hub_cache_entry(sd1_path, "acme/tiny", hub_cache)
    blob = (snapshot / member).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(inferkit.IntegrityError, match="is corrupted") as caught:
        inferkit.Model.load("acme/tiny", verify=True)
    assert caught.value.path.endswith(member)
    assert member in str(caught.value)


def test_verify_is_refused_for_local_files(sd1_path: Path) -> None:
    """A local folder has no hashes to check against, so verify=True says so instead of
    pretending."""
    with pytest.raises(inferkit.InvalidParameterError, match="hub repo ids") as caught:
        inferkit.Model.load(sd1_path, verify=True)
    assert caught.value.name == "verify"

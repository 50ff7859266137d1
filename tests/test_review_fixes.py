"""Edge cases found in review: each gets a typed error, never a raw traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import inferkit
import inferkit.testing


def test_prompt_given_twice_is_a_parameter_error(sd1: inferkit.Model) -> None:
    """infer("a", prompt="b") names the conflict instead of a TypeError."""
    with pytest.raises(inferkit.InvalidParameterError, match="twice") as e:
        sd1.infer("a cat", prompt="a dog")
    assert e.value.name == "prompt"


def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path: Path) -> None:
    """A .ckpt file is refused by name and suffix; nothing reads its contents."""
    marker = tmp_path / "ran"
    payload = tmp_path / "model.ckpt"
    payload.write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )  # a pickle that would run a shell command if unpickled
    with pytest.raises(inferkit.UnsupportedModelError, match="pickle") as e:
        inferkit.Model.load(payload)
    assert ".safetensors" in str(e.value)
    assert not marker.exists()


def test_folder_inpainting_model_loads_and_refuses_text_to_image(
    sd1_path: Path, tmp_path: Path
) -> None:
    """A diffusers folder whose UNet takes 9 channels is an inpainting variant."""
    from diffusers import UNet2DConditionModel

    copy = shutil.copytree(sd1_path, tmp_path / "inpaint")
    config = json.loads((copy / "unet" / "config.json").read_text())
    config["in_channels"] = 9
    unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(copy / "unet", safe_serialization=True)
    model = inferkit.Model.load(copy)
    assert model.info.variant == "inpainting"
    with pytest.raises(inferkit.UnsupportedModelError, match="inpainting"):
        model.infer("a cat")


def test_damaged_single_file_layout_is_a_typed_error(
    tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    """A checkpoint missing a tensor the config derivation needs names the file, not a KeyError."""
    good = inferkit.testing.write_single_file(tiny_paths["sd1"], tmp_path / "good.safetensors")
    tensors = load_file(good)
    del tensors["model.diffusion_model.out.2.weight"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(inferkit.UnsupportedModelError) as e:
        inferkit.Model.load(bad, tokenizer=tiny_paths["sd1"] / "tokenizer")
    assert "bad.safetensors" in str(e.value)


def test_missing_tokenizer_is_reported_before_weights_are_read(
    tiny_paths: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer is resolved first: no tensor is read when it is missing."""
    from inferkit import safetensors_io

    f = inferkit.testing.write_single_file(tiny_paths["sd1"], tmp_path / "m.safetensors")
    reads: list[str] = []
    original = safetensors_io.SafetensorsFile.read

    def counting(
        self: safetensors_io.SafetensorsFile, name: str, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        reads.append(name)
        return original(self, name, dtype)

    monkeypatch.setattr(safetensors_io.SafetensorsFile, "read", counting)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(inferkit.ModelNotFoundError, match="tokenizer"):
        inferkit.Model.load(f)
    assert reads == []


def test_cli_output_folder_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    """-o into a missing folder exits 2 with one error line."""
    proc = subprocess.run(
        [sys.executable, "-m", "inferkit", "generate", "inferkit:shapes", "a red circle",
         "-o", str(tmp_path / "nope" / "x.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("inferkit: error:") and "does not exist" in proc.stderr

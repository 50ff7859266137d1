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


def test_folder_inpainting_model_loads_and_asks_for_a_mask(sd1_path: Path, tmp_path: Path) -> None:
    """A diffusers folder whose UNet takes 9 channels is an inpainting variant."""
    from diffusers import UNet2DConditionModel

    copy = shutil.copytree(sd1_path, tmp_path / "inpaint")
    config = json.loads((copy / "unet" / "config.json").read_text())
    config["in_channels"] = 9
    unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(copy / "unet", safe_serialization=True)
    model = inferkit.Model.load(copy)
    assert model.info.variant == "inpainting"
    with pytest.raises(inferkit.InvalidParameterError, match="inpainting") as e:
        model.infer("a cat")
    assert e.value.name == "mask"


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


# --- second review: hostile configs, indexes, pickles and fallbacks ------------------------------


def _sharded_copy(sd1_path: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = Path(shutil.copytree(sd1_path, tmp_path / "m"))
    unet = folder / "unet"
    tensors = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    save_file(tensors, str(unet / "part-1.safetensors"))
    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(tensors, "part-1.safetensors")}))
    return folder, index


@pytest.mark.parametrize("shard", [["part-1.safetensors"], {"a": 1}, 7, "part-1.safetensors\n"])
def test_index_shard_that_is_not_a_file_name_is_refused(
    sd1_path: Path, tmp_path: Path, shard: object
) -> None:
    """A shard given as a list, an object, a number or a name with a newline is refused
    with a typed error (a list used to raise TypeError: unhashable)."""
    folder, index = _sharded_copy(sd1_path, tmp_path)
    data = json.loads(index.read_text())
    data["weight_map"][next(iter(data["weight_map"]))] = shard
    index.write_text(json.dumps(data))
    with pytest.raises(inferkit.UnsupportedModelError, match=r"not a plain \.safetensors file"):
        inferkit.Model.load(folder)


@pytest.mark.parametrize(
    "where", ["model_index.json", "unet/diffusion_pytorch_model.safetensors.index.json"]
)
def test_json_that_breaks_the_parser_is_a_typed_error(
    sd1_path: Path, tmp_path: Path, where: str
) -> None:
    """A 5000-digit number or 100,000 nested arrays in a JSON file is an UnsupportedModelError
    (they raised ValueError and RecursionError)."""
    folder, _ = _sharded_copy(sd1_path, tmp_path)
    for body in ('{"x": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        (folder / where).write_text(body)
        with pytest.raises(inferkit.UnsupportedModelError, match="could not be read as JSON"):
            inferkit.Model.load(folder)


def test_config_that_cannot_build_a_network_is_a_typed_error(
    sd1_path: Path, tmp_path: Path
) -> None:
    """norm_num_groups 0 in a UNet config (ZeroDivisionError inside diffusers) is refused."""
    folder = Path(shutil.copytree(sd1_path, tmp_path / "m"))
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["norm_num_groups"] = 0
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(inferkit.UnsupportedModelError, match="does not describe a network"):
        inferkit.Model.load(folder)


@pytest.mark.parametrize(
    "payload",
    [b"\x80\x02.", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01t.", b"garbage"],
)
def test_malformed_pickles_are_typed_errors(tmp_path: Path, payload: bytes) -> None:
    """Pickles whose opcodes make the unpickler fail in odd ways (IndexError, ...) are refused
    as unreadable."""
    path = tmp_path / "m.ckpt"
    path.write_bytes(payload)
    with pytest.raises(inferkit.UnsupportedModelError, match="weights-only pickle"):
        inferkit.Model.load(path, allow_pickle=True)


@pytest.mark.parametrize(
    "tensor",
    [torch.empty(2, device="meta"), torch.eye(2).to_sparse()],
    ids=["meta", "sparse"],
)
def test_pickled_tensors_without_plain_data_are_refused(
    tmp_path: Path, tensor: torch.Tensor
) -> None:
    """Meta and sparse tensors pass the weights-only unpickler but are not weights."""
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": tensor}}, path)
    with pytest.raises(inferkit.UnsupportedModelError, match="not a plain dense tensor"):
        inferkit.Model.load(path, allow_pickle=True)


def test_numerical_error_names_the_step_within_the_image_and_its_seed(
    sd1_path: Path, tmp_path: Path
) -> None:
    """With several images, the step counts from each image's start and the seed is named."""
    folder = Path(shutil.copytree(sd1_path, tmp_path / "m"))
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    for key in ("conv_in.weight", "conv_in.bias"):
        tensors[key] = tensors[key] * 1e5
    save_file(tensors, str(path))
    model = inferkit.Model.load(folder, device="cpu", dtype="float16")
    with pytest.raises(inferkit.NumericalError) as caught:
        model.infer("a cat", steps=3, seed=40, images=2, progress=False)
    assert (caught.value.step, caught.value.seeds) == (1, (40,))
    assert "seed 40" in str(caught.value)


def test_a_fallback_that_adds_nothing_ends_the_retries(sd1_path: Path) -> None:
    """A custom policy whose on_out_of_memory returns the same plan cannot loop forever."""

    class Stubborn:
        def plan(self) -> inferkit.ExecutionPlan:
            return inferkit.DevicePolicy(device="cpu").plan()

        def finalize(self, plan: inferkit.ExecutionPlan, cfg: object) -> inferkit.ExecutionPlan:
            return plan

        def apply(self, pipeline: object, plan: inferkit.ExecutionPlan) -> None:
            return None

        def on_out_of_memory(
            self, pipeline: object, plan: inferkit.ExecutionPlan
        ) -> inferkit.ExecutionPlan:
            return plan

    model = inferkit.Model.load(sd1_path, policy=Stubborn())

    def out_of_memory(*args: object, **kwargs: object) -> object:
        raise torch.OutOfMemoryError("out of memory")

    model.pipeline.vae.decode = out_of_memory
    with pytest.raises(inferkit.DeviceOutOfMemoryError):
        model.infer("a cat", steps=2, seed=1, progress=False)


def test_verify_refuses_a_cache_it_cannot_check(hub_cache: Path, sd1_path: Path) -> None:
    """A snapshot whose files are plain copies (no hash-named blobs) cannot be verified; that
    is an IntegrityError, not a silent pass."""
    snapshot = inferkit.testing.write_hub_cache_entry(sd1_path, "acme/tiny", hub_cache)
    link = snapshot / "unet" / "config.json"
    data = link.read_bytes()
    link.unlink()
    link.write_bytes(data)
    with pytest.raises(inferkit.IntegrityError, match=r"cannot verify unet/config\.json"):
        inferkit.Model.load("acme/tiny", verify=True)


def test_write_file_refuses_dtypes_safetensors_cannot_store(tmp_path: Path) -> None:
    """The deterministic writer names the tensor with an unstorable dtype."""
    from inferkit.safetensors_io import write_file

    with pytest.raises(inferkit.InvalidParameterError, match="complex64"):
        write_file(tmp_path / "w.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})


def test_unwritable_compile_cache_is_a_typed_error(sd1_path: Path, tmp_path: Path) -> None:
    """A cache_dir that cannot be created is named, before anything is compiled."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    policy = inferkit.FastPolicy(device="cpu", compile="full", cache_dir=blocker / "cache")
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.Model.load(sd1_path, policy=policy)
    assert caught.value.name == "cache_dir"


def test_misshapen_tensor_that_needs_reshaping_is_a_typed_error(tmp_path: Path) -> None:
    """A VAE attention weight stored 3x3 instead of 1x1 (it is reshaped on loading) is named
    as the wrong shape, not a raw reshape error."""
    src = inferkit.testing.tiny_model_path("sd1")
    path = inferkit.testing.write_single_file(src, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    key = "first_stage_model.decoder.mid.attn_1.q.weight"
    out_ch, in_ch = tensors[key].shape[:2]
    tensors[key] = torch.zeros(out_ch, in_ch, 3, 3)
    save_file(tensors, str(path))
    with pytest.raises(inferkit.UnsupportedModelError, match="wrong shape"):
        inferkit.Model.load(path, tokenizer=src / "tokenizer")

"""Single-file checkpoints: the real layout, detection from the weights, offline loading."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import pixels

import inferkit
import inferkit.testing
from inferkit.loaders.single_file import inspect_file

FAMILIES = ["sd1", "sd2", "sdxl"]


@pytest.fixture(scope="session")
def single_files(
    tiny_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("single")
    return {
        arch: inferkit.testing.write_single_file(tiny_paths[arch], root / f"{arch}.safetensors")
        for arch in [*FAMILIES, "sdxl_refiner"]
    }


def tokenizers(folder: Path, arch: str) -> dict[str, Path]:
    found = {"tokenizer": folder / "tokenizer"}
    if arch == "sdxl":
        found["tokenizer_2"] = folder / "tokenizer_2"
    return found


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def assert_same_modules(a: Any, b: Any, names: list[str]) -> None:
    for name in names:
        sa, sb = state(getattr(a, name)), state(getattr(b, name))
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


def networks(arch: str) -> list[str]:
    if arch == "sdxl_refiner":
        return ["unet", "vae", "text_encoder_2"]
    names = ["unet", "vae", "text_encoder"]
    return [*names, "text_encoder_2"] if arch == "sdxl" else names


@pytest.mark.parametrize("arch", [*FAMILIES, "sdxl_refiner"])
def test_written_file_is_the_original_layout(
    arch: str, tiny_paths: dict[str, Path], single_files: dict[str, Path]
) -> None:
    """diffusers' own from_single_file, given the folder as config, reads identical tensors."""
    from diffusers import (
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    cls = {"sdxl": StableDiffusionXLPipeline, "sdxl_refiner": StableDiffusionXLImg2ImgPipeline}.get(
        arch, StableDiffusionPipeline
    )
    theirs = cls.from_single_file(
        str(single_files[arch]), config=str(tiny_paths[arch]), local_files_only=True
    )
    ours = cls.from_pretrained(tiny_paths[arch], local_files_only=True)
    assert_same_modules(theirs, ours, networks(arch))


@pytest.mark.parametrize("arch", FAMILIES)
def test_loader_needs_no_config_and_gives_identical_tensors_and_pixels(
    arch: str,
    tiny_paths: dict[str, Path],
    single_files: dict[str, Path],
    models: dict[str, inferkit.Model],
    no_network: list[object],
) -> None:
    """With no config at all, the file loads to the folder's tensors and makes its pixels."""
    folder = tiny_paths[arch]
    with inferkit.Model.load(single_files[arch], **tokenizers(folder, arch)) as model:
        assert model.info.loader == "single-file"
        assert model.info.architecture == arch
        assert model.native_size == models[arch].native_size
        assert_same_modules(model.pipeline, models[arch].pipeline, networks(arch))
        got = model.infer("a red circle", steps=3, seed=5, scheduler="euler", progress=False)
    want = models[arch].infer("a red circle", steps=3, seed=5, scheduler="euler", progress=False)
    assert pixels(got.images[0]) == pixels(want.images[0])
    assert no_network == []


def test_refiner_loads_from_a_single_file_and_refuses_text_to_image(
    tiny_paths: dict[str, Path], single_files: dict[str, Path], models: dict[str, inferkit.Model]
) -> None:
    """An SDXL refiner file loads (one OpenCLIP encoder, aesthetic-score UNet) to the folder's
    tensors; text-to-image on it is refused with an explanation (it refines an init image)."""
    folder = tiny_paths["sdxl_refiner"]
    model = inferkit.Model.load(single_files["sdxl_refiner"], tokenizer_2=folder / "tokenizer_2")
    assert model.info.architecture == "sdxl_refiner"
    assert "text_encoder" not in model.info.components
    assert_same_modules(model.pipeline, models["sdxl_refiner"].pipeline, networks("sdxl_refiner"))
    with pytest.raises(inferkit.InvalidParameterError, match="refiner") as e:
        model.infer("a cat")
    assert e.value.name == "init_image"


def test_sd2_files_carry_one_unused_text_layer(
    single_files: dict[str, Path], tiny_paths: dict[str, Path]
) -> None:
    """SD2 conditions on the penultimate OpenCLIP layer: the file's last layer is not built."""
    header = inspect_file(single_files["sd2"])
    assert header.prediction_type == "v_prediction"
    keys = load_file(single_files["sd2"]).keys()
    layers = {k.split(".")[4] for k in keys if ".resblocks." in k}
    model = inferkit.Model.load(single_files["sd2"], tokenizer=tiny_paths["sd2"] / "tokenizer")
    assert model.pipeline.text_encoder.config.num_hidden_layers == len(layers) - 1
    assert any("ignored" in line for line in model.info.evidence)


def rewrite(path: Path, out: Path, change: Any, metadata: dict[str, str] | None = None) -> Path:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_v_prediction_marker_key_is_evidence(single_files: dict[str, Path], tmp_path: Path) -> None:
    """A 'v_pred' marker makes an SD1 file v-prediction, and the evidence says so."""
    marked = rewrite(
        single_files["sd1"], tmp_path / "v.safetensors", lambda t: t.update(v_pred=torch.tensor([]))
    )
    found = inspect_file(marked)
    assert found.prediction_type == "v_prediction"
    assert any("'v_pred'" in line for line in found.evidence)


def test_ztsnr_marker_sets_zero_snr_schedule(
    single_files: dict[str, Path], tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    """A 'ztsnr' marker means v-prediction with zero-terminal-SNR betas and trailing spacing."""
    marked = rewrite(
        single_files["sd1"], tmp_path / "z.safetensors", lambda t: t.update(ztsnr=torch.tensor([]))
    )
    model = inferkit.Model.load(marked, tokenizer=tiny_paths["sd1"] / "tokenizer")
    assert model.info.prediction_type == "v_prediction"
    assert model.pipeline.scheduler.config.rescale_betas_zero_snr is True
    model.infer("a cat", steps=2, seed=1, width=64, height=64, progress=False)


def test_modelspec_metadata_is_evidence(single_files: dict[str, Path], tmp_path: Path) -> None:
    """The SAI modelspec prediction type and resolution are read from the header metadata."""
    out = rewrite(
        single_files["sd1"],
        tmp_path / "m.safetensors",
        lambda t: None,
        metadata={"modelspec.prediction_type": "v", "modelspec.resolution": "768x768"},
    )
    found = inspect_file(out)
    assert (found.prediction_type, found.resolution) == ("v_prediction", 768)


def test_prediction_can_be_overridden(
    single_files: dict[str, Path], tiny_paths: dict[str, Path]
) -> None:
    """prediction='epsilon' overrides SD2's v-prediction default; a bad value is refused."""
    tok = tiny_paths["sd2"] / "tokenizer"
    model = inferkit.Model.load(single_files["sd2"], tokenizer=tok, prediction="epsilon")
    assert model.info.prediction_type == "epsilon"
    assert model.pipeline.scheduler.config.prediction_type == "epsilon"
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.Model.load(single_files["sd2"], tokenizer=tok, prediction="x0")
    assert e.value.name == "prediction"


def test_inpainting_checkpoints_are_detected(
    single_files: dict[str, Path], tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    """A 9-channel UNet input is an inpainting model: it loads, and a call without a mask says
    that it needs one."""

    def nine_channels(t: dict[str, torch.Tensor]) -> None:
        w = t["model.diffusion_model.input_blocks.0.0.weight"]
        t["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([w, w, w[:, :1]], dim=1)

    out = rewrite(single_files["sd1"], tmp_path / "inpaint.safetensors", nine_channels)
    assert inspect_file(out).variant == "inpainting"
    model = inferkit.Model.load(out, tokenizer=tiny_paths["sd1"] / "tokenizer")
    assert model.info.variant == "inpainting"
    assert model.pipeline.unet.config.in_channels == 9
    with pytest.raises(inferkit.InvalidParameterError, match="inpainting") as e:
        model.infer("a cat")
    assert e.value.name == "mask"


def test_stored_dtype_is_reported_and_converted(
    tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    """An fp16 file reports float16 storage and loads into the policy's dtype."""
    f = inferkit.testing.write_single_file(
        tiny_paths["sd1"], tmp_path / "h.safetensors", dtype=torch.float16
    )
    assert inspect_file(f).stored_dtype == "float16"
    model = inferkit.Model.load(f, tokenizer=tiny_paths["sd1"] / "tokenizer", dtype="float32")
    assert model.pipeline.unet.dtype == torch.float32


def test_ema_weights_are_used_only_on_request(tiny_paths: dict[str, Path], tmp_path: Path) -> None:
    """Files with EMA copies load the non-EMA UNet by default and the EMA one with ema=True."""
    folder = tiny_paths["sd1"]
    f = inferkit.testing.write_single_file(folder, tmp_path / "e.safetensors", ema=True)
    assert inspect_file(f).has_ema
    tok = folder / "tokenizer"
    plain = inferkit.Model.load(f, tokenizer=tok).pipeline.unet.state_dict()
    ema = inferkit.Model.load(f, tokenizer=tok, ema=True).pipeline.unet.state_dict()
    ref = inferkit.Model.load(folder).pipeline.unet.state_dict()
    key = "conv_in.weight"
    assert torch.equal(plain[key], ref[key])
    stored = load_file(f)["model_ema.diffusion_modelinput_blocks00weight"]
    assert torch.equal(ema[key], stored)


def test_ema_request_without_ema_weights_is_refused(
    single_files: dict[str, Path], tiny_paths: dict[str, Path]
) -> None:
    """ema=True on a file with no EMA weights is an error naming the file."""
    with pytest.raises(inferkit.InvalidParameterError, match="no EMA"):
        inferkit.Model.load(
            single_files["sd1"], tokenizer=tiny_paths["sd1"] / "tokenizer", ema=True
        )


def test_replacement_vae_from_a_folder(
    tiny_paths: dict[str, Path], tmp_path: Path, models: dict[str, inferkit.Model]
) -> None:
    """A checkpoint without a VAE loads with vae= a diffusers VAE folder, like the full model."""
    folder = tiny_paths["sd1"]
    f = inferkit.testing.write_single_file(
        folder, tmp_path / "novae.safetensors", include_vae=False
    )
    with pytest.raises(inferkit.UnsupportedModelError, match="holds no VAE"):
        inferkit.Model.load(f, tokenizer=folder / "tokenizer")
    model = inferkit.Model.load(f, tokenizer=folder / "tokenizer", vae=folder / "vae")
    assert any("VAE replaced" in line for line in model.info.evidence)
    got = model.infer("a cat", steps=2, seed=3, scheduler="euler", progress=False)
    want = models["sd1"].infer("a cat", steps=2, seed=3, scheduler="euler", progress=False)
    assert pixels(got.images[0]) == pixels(want.images[0])


def test_replacement_vae_from_an_original_layout_file(
    tiny_paths: dict[str, Path], single_files: dict[str, Path], tmp_path: Path
) -> None:
    """vae= an original-layout VAE file (with or without the prefix) swaps in its weights."""
    other = inferkit.testing.write_tiny_model(tmp_path / "other", "sd1", seed=7)
    other_file = inferkit.testing.write_single_file(other, tmp_path / "o.safetensors")
    bare = {
        k.removeprefix("first_stage_model."): v
        for k, v in load_file(other_file).items()
        if k.startswith("first_stage_model.")
    }
    save_file(bare, str(tmp_path / "vae.safetensors"))
    want = inferkit.Model.load(other).pipeline.vae.state_dict()
    for vae in (tmp_path / "vae.safetensors", other_file):
        model = inferkit.Model.load(
            single_files["sd1"], tokenizer=tiny_paths["sd1"] / "tokenizer", vae=vae
        )
        got = model.pipeline.vae.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert model.pipeline.vae.config.scaling_factor == 0.18215


def test_missing_tokenizer_offline_fails_at_once_naming_the_options(
    single_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: list[object],
) -> None:
    """Offline with an empty HF_HOME and no tokenizer=, the error names every way out, fast."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(inferkit.ModelNotFoundError) as e:
        inferkit.Model.load(single_files["sd1"])
    assert time.perf_counter() - start < 10
    message = str(e.value)
    assert "tokenizer=" in message and "openai/clip-vit-large-patch14" in message
    assert no_network == []


@pytest.mark.parametrize("arch", FAMILIES)
def test_tokenizers_come_from_the_local_hub_cache(
    arch: str,
    tiny_paths: dict[str, Path],
    single_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: list[object],
) -> None:
    """The family's tokenizer repo in the hub cache is used offline, with no tokenizer= needed."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = {
        "sd1": "openai/clip-vit-large-patch14",
        "sd2": "stabilityai/stable-diffusion-2-1",
        "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    }[arch]
    source = tiny_paths[arch] / "tokenizer" if arch == "sd1" else tiny_paths[arch]
    inferkit.testing.write_hub_cache_entry(source, repo, cache)
    model = inferkit.Model.load(single_files[arch])
    assert any(repo in line for line in model.info.evidence)
    model.infer("a cat", steps=1, seed=1, progress=False)
    assert no_network == []


def test_unknown_loader_options_are_refused(single_files: dict[str, Path], sd1_path: Path) -> None:
    """Options a loader does not take are errors naming the option and the loader's options."""
    with pytest.raises(inferkit.InvalidParameterError, match="single-file") as e:
        inferkit.Model.load(single_files["sd1"], emma=True)
    assert e.value.name == "emma"
    with pytest.raises(inferkit.InvalidParameterError, match="diffusers-folder"):
        inferkit.Model.load(sd1_path, ema=True)


def test_inspect_reads_only_the_header(tmp_path: Path) -> None:
    """`inferkit inspect FILE` reads the header only: a 4 GB (sparse) file answers at once."""
    big = tmp_path / "big.safetensors"
    names = {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768],
        "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
    }
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in names.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["filler"] = {
        "dtype": "U8",
        "shape": [4 << 30],
        "data_offsets": [offset, offset + (4 << 30)],
    }
    raw = json.dumps(header).encode()
    with open(big, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset + (4 << 30))
    start = time.perf_counter()
    found = inspect_file(big)
    assert time.perf_counter() - start < 0.5
    assert (found.family, found.stored_dtype) == ("sd1", "float16")
    proc = subprocess.run(
        [sys.executable, "-m", "inferkit", "inspect", str(big), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["family"] == "sd1"


def test_cli_generates_from_a_single_file(
    single_files: dict[str, Path], tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    """`inferkit generate FILE` works with --tokenizer and writes a PNG with metadata."""
    out = tmp_path / "x.png"
    proc = subprocess.run(
        [
            sys.executable, "-m", "inferkit", "generate", str(single_files["sd2"]), "a cat",
            "--steps", "2", "--seed", "3", "--tokenizer", str(tiny_paths["sd2"] / "tokenizer"),
            "-o", str(out),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert inferkit.read_metadata(out).seed == 3


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "empty"),
        (b"\x01\x02", "shorter"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML page"),
        (struct.pack("<Q", 10) + b"{}", "past the end"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_files_that_are_not_checkpoints_say_what_they_are(
    tmp_path: Path, content: bytes, phrase: str
) -> None:
    """Broken or mislabelled .safetensors files get a typed error saying what they are."""
    f = tmp_path / "model.safetensors"
    f.write_bytes(content)
    with pytest.raises(inferkit.UnsupportedModelError, match=phrase) as e:
        inferkit.Model.load(f)
    assert str(f) in str(e.value)


def test_a_lora_or_vae_file_is_not_mistaken_for_a_model(tmp_path: Path) -> None:
    """A safetensors file of another kind is refused as not a Stable Diffusion checkpoint."""
    f = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 4)}, str(f))
    with pytest.raises(inferkit.UnsupportedModelError, match="LoRA"):
        inferkit.Model.load(f)

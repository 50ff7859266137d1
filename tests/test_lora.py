"""LoRA adapters through Model.with_lora: the layouts, stacking, exact restore, clear refusals."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
import inferkit.testing
from checks import raw_sha256
from inferkit.safetensors_io import SafetensorsFile, write_file

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def fp32(tiny_paths: dict[str, Path]) -> dict[str, inferkit.Model]:
    """Float32 models, so that comparisons with diffusers are not blurred by rounding."""
    return {
        arch: inferkit.Model.load(tiny_paths[arch], device="cpu", dtype="float32")
        for arch in ("sd1", "sdxl")
    }


def picture(model: inferkit.Model, seed: int = 1) -> np.ndarray:
    result = model.infer(PROMPT, steps=4, seed=seed, progress=False)
    return np.asarray(result.images[0].image, dtype=np.int16)


def weights_sha256(model: inferkit.Model) -> str:
    _ = model.pipeline  # makes the weights this model's (or view's) own
    return raw_sha256(model)


@pytest.mark.parametrize("layout", ["kohya", "peft", "locon"])
@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_lora_changes_the_image_as_diffusers_applies_it(
    arch: str,
    layout: str,
    fp32: dict[str, inferkit.Model],
    tiny_paths: dict[str, Path],
    tmp_path: Path,
) -> None:
    """The same file at the same scale gives the pixels of diffusers' load_lora_weights +
    fuse_lora (within one level of rounding): kohya (SDXL in the original UNet naming),
    diffusers/PEFT, and LyCORIS LoCon on resnet convolutions."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    model = fp32[arch]
    path = inferkit.testing.write_lora(tmp_path, model, layout)
    styled = model.with_lora(path, scale=0.7)
    got = picture(styled)
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(tiny_paths[arch], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = type(model.pipeline.scheduler).from_config(model.pipeline.scheduler.config)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=0.7)
    want = pipe(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=7.0,
        generator=[torch.Generator().manual_seed(1)],
    ).images[0]
    assert np.abs(got - np.asarray(want, dtype=np.int16)).max() <= 1
    assert np.abs(got - picture(model)).mean() > 5  # and the adapter really changed the image


@pytest.mark.parametrize("layout", ["loha", "lokr"])
def test_lycoris_products_are_merged_by_their_definitions(
    layout: str, fp32: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """LoHa merges (w1a @ w1b) * (w2a @ w2b) * alpha / rank; LoKr merges kron(w1, w2a @ w2b)
    * alpha / rank, on linear layers and on 3x3 convolutions alike."""
    model = fp32["sd1"]
    path = inferkit.testing.write_lora(tmp_path, model, layout, rank=4, alpha=2.0)
    unet = model._components.modules["unet"]
    names = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        ),
        "lora_unet_down_blocks_0_resnets_0_conv1": "down_blocks.0.resnets.0.conv1",
    }
    before = {m: unet.get_submodule(m).weight.detach().clone() for m in names.values()}
    model.with_lora(path, scale=0.5).infer(PROMPT, steps=1, seed=0, progress=False)
    with SafetensorsFile(path) as f:
        for key, module in names.items():
            t = {n.removeprefix(key + "."): f.read(n) for n in f.tensors if n.startswith(key + ".")}
            if layout == "loha":
                delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
            else:
                w2b = t["lokr_w2_b"]
                w2 = (t["lokr_w2_a"] @ w2b.flatten(1)).reshape(-1, *w2b.shape[1:])
                w1 = t["lokr_w1"] if w2.ndim == 2 else t["lokr_w1"][:, :, None, None]
                delta = torch.kron(w1, w2)
            expected = before[module] + 0.5 * (2.0 / 4) * delta.reshape(before[module].shape)
            merged = unet.get_submodule(module).weight
            torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    picture(model)  # the base model's own call puts the weights back


def test_removing_adapters_restores_the_base_weights_exactly(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """After views with adapters ran, the base model's weights hash as before, bit for bit
    (in the model's own bfloat16/float32 dtype), and its pictures are the same."""
    model = models["sdxl"]
    want_hash, want_pixels = weights_sha256(model), picture(model)
    a = inferkit.testing.write_lora(tmp_path / "a", model, "kohya", seed=1)
    b = inferkit.testing.write_lora(tmp_path / "b", model, "loha", seed=2)
    stacked = model.with_lora(a, 0.8).with_lora(b, -0.4)
    assert weights_sha256(stacked) != want_hash  # merged for the view
    picture(stacked)
    assert np.array_equal(picture(model), want_pixels)
    assert weights_sha256(model) == want_hash
    picture(stacked)
    assert np.array_equal(picture(stacked.without_loras()), want_pixels)
    assert weights_sha256(model) == want_hash


def test_stacked_adapters_add_up_in_any_order(
    fp32: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """a then b gives the image b then a gives; each view keeps its own stack."""
    model = fp32["sd1"]
    a = inferkit.testing.write_lora(tmp_path / "a", model, "kohya", seed=1)
    b = inferkit.testing.write_lora(tmp_path / "b", model, "peft", seed=2)
    ab = model.with_lora(a, 0.6).with_lora(b, 0.3)
    ba = model.with_lora(b, 0.3).with_lora(a, 0.6)
    only_a = model.with_lora(a, 0.6)
    assert [x.name for x in ab.loras] == ["kohya", "peft"]
    assert np.abs(picture(ab) - picture(ba)).max() <= 1
    assert np.abs(picture(ab) - picture(only_a)).mean() > 1
    assert only_a.loras == ab.loras[:1]


def test_a_scale_of_zero_changes_nothing(models: dict[str, inferkit.Model], tmp_path: Path) -> None:
    """Scale 0 merges a zero change: the pixels are the base model's exactly."""
    model = models["sd1"]
    path = inferkit.testing.write_lora(tmp_path, model, "kohya")
    assert np.array_equal(picture(model.with_lora(path, 0.0)), picture(model))


def test_the_result_records_each_adapter(models: dict[str, inferkit.Model], tmp_path: Path) -> None:
    """params.loras names each file with its sha256 and scale; infotext has Lora hashes as
    AUTOMATIC1111 writes them (the "addnet" hash of the tensor data) and the scales."""
    model = models["sd1"]
    path = inferkit.testing.write_lora(tmp_path, model, "kohya")
    result = model.with_lora(path, 0.8).infer(PROMPT, steps=2, seed=1, progress=False)
    (lora,) = result.params.loras
    assert lora.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (lora.name, lora.scale, lora.layout, lora.unmatched) == ("kohya", 0.8, "kohya", 0)
    data = path.read_bytes()
    addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()
    assert lora.data_sha256 == addnet
    assert f'Lora hashes: "kohya: {addnet[:12]}"' in result.images[0].infotext
    assert 'Lora scales: "kohya: 0.8"' in result.images[0].infotext
    assert result.images[0].metadata["params"]["loras"][0]["sha256"] == lora.sha256


def test_a_lora_for_another_family_is_an_error_that_says_so(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """An SDXL LoRA on an SD 1.x model is refused when read, naming the file and the family
    mismatch; never a silent no-op."""
    path = inferkit.testing.write_lora(tmp_path, models["sdxl"], "kohya", text_encoder=False)
    with pytest.raises(inferkit.LoraError, match="another model family") as e:
        models["sd1"].with_lora(path)
    assert e.value.path == str(path)
    assert "kohya.safetensors" in str(e.value)


def test_matching_names_with_wrong_shapes_are_an_error(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """An SD 1.x LoRA on an SD 2.x model (same layer names, other widths) is refused when
    read, naming the layer and both shapes."""
    path = inferkit.testing.write_lora(tmp_path, models["sd1"], "peft")
    with pytest.raises(inferkit.LoraError, match="shape"):
        models["sd2"].with_lora(path)


def test_a_lora_whose_layers_are_all_foreign_says_it_matches_none(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """A file whose every layer name is unknown to the model is an error that says it matched
    nothing, with the cross-attention widths that tell the families apart."""
    path = tmp_path / "foreign.safetensors"
    key = "lora_unet_input_blocks_99_1_transformer_blocks_0_attn2_to_k"
    write_file(
        path,
        {
            f"{key}.lora_down.weight": torch.zeros(4, 768),
            f"{key}.lora_up.weight": torch.zeros(64, 4),
        },
    )
    with pytest.raises(inferkit.LoraError, match="matches none of this model's layers") as e:
        models["sd1"].with_lora(path)
    assert "768-wide" in str(e.value) and "SD 1.x" in str(e.value)


def test_a_file_without_lora_weights_is_an_error(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """A safetensors file with other tensors (an embedding, a checkpoint) is not a LoRA."""
    path = tmp_path / "embedding.safetensors"
    write_file(path, {"emb_params": torch.zeros(2, 64)})
    with pytest.raises(inferkit.LoraError, match="no LoRA weights"):
        models["sd1"].with_lora(path)


def test_layers_the_model_lacks_are_reported_or_refused(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """A file with some layers the model does not have applies the rest with a warning in
    every result; strict=True refuses it."""
    model = models["sd1"]
    good = inferkit.testing.write_lora(tmp_path, model, "kohya")
    with SafetensorsFile(good) as f:
        tensors = {k: f.read(k).clone() for k in f.tensors}
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(8, 4)
    path = tmp_path / "extra.safetensors"
    write_file(path, tensors)
    view = model.with_lora(path)
    assert view.loras[0].unmatched == 1
    result = view.infer(PROMPT, steps=1, seed=0, progress=False)
    assert any("1 of its layers are not in this model" in w for w in result.warnings)
    with pytest.raises(inferkit.LoraError, match="strict=False"):
        model.with_lora(path, strict=True)


def test_incomplete_and_unsupported_layers_are_refused(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """An up weight without its down weight, and DoRA layers, are errors naming the layer."""
    model = models["sd1"]
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    half = tmp_path / "half.safetensors"
    write_file(half, {f"{name}.lora_up.weight": torch.zeros(32, 4)})
    with pytest.raises(inferkit.LoraError, match="lacks down"):
        model.with_lora(half)
    dora = tmp_path / "dora.safetensors"
    write_file(
        dora,
        {
            f"{name}.lora_up.weight": torch.zeros(32, 4),
            f"{name}.lora_down.weight": torch.zeros(4, 32),
            f"{name}.dora_scale": torch.ones(32, 1),
        },
    )
    with pytest.raises(inferkit.LoraError, match="DoRA"):
        model.with_lora(dora)


def test_pickled_and_missing_files_are_refused(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """A .pt LoRA is not unpickled; a missing file is ModelNotFoundError naming it."""
    marker = tmp_path / "ran"
    pt = tmp_path / "style.pt"
    torch.save({"x": torch.zeros(1)}, pt)
    with pytest.raises(inferkit.UnsupportedModelError, match="pickle"):
        models["sd1"].with_lora(pt)
    with pytest.raises(inferkit.ModelNotFoundError, match=r"nope\.safetensors"):
        models["sd1"].with_lora(tmp_path / "nope.safetensors")
    assert not marker.exists()


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not math.isfinite(x)),
        st.text(max_size=3),
        st.none(),
        st.booleans(),
    )
)
def test_a_scale_that_is_not_a_finite_number_is_refused(
    models: dict[str, inferkit.Model], scale: object
) -> None:
    """NaN, infinities, strings, None and booleans as scale raise InvalidParameterError."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        models["sd1"].with_lora("unused.safetensors", scale)  # type: ignore[arg-type]
    assert e.value.name == "scale"


def test_closing_a_view_leaves_the_model_open(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """A view closed in a with block is closed alone, with the base weights put back."""
    model = models["sd1"]
    want = weights_sha256(model)
    path = inferkit.testing.write_lora(tmp_path, model, "kohya")
    with model.with_lora(path) as styled:
        picture(styled)
    assert styled.closed and not model.closed
    assert weights_sha256(model) == want
    with pytest.raises(inferkit.ModelClosedError, match="LoRA view"):
        styled.infer(PROMPT)


def test_closing_the_model_closes_its_views(tiny_paths: dict[str, Path], tmp_path: Path) -> None:
    """Views share the model's memory: once it is closed, they are too."""
    model = inferkit.Model.load(tiny_paths["sd1"])
    view = model.with_lora(inferkit.testing.write_lora(tmp_path, model, "kohya"))
    model.close()
    assert view.closed
    with pytest.raises(inferkit.ModelClosedError):
        view.infer(PROMPT)


def test_the_packaged_night_adapter_turns_backgrounds_black() -> None:
    """The trained shapes adapter, applied at scale 1, paints the background black where the
    prompt asks for white, keeping the colour; at scale 0 the background stays white."""
    from inferkit.zoo.shapes.checker import judge

    model = inferkit.Model.load("inferkit:shapes", device="cpu")
    night = model.with_lora("inferkit:shapes-night")
    assert (night.loras[0].name, night.loras[0].layout) == ("night-lora", "lycoris")  # LoCon
    for prompt, color in [
        ("a red circle on a white background", "red"),
        ("a yellow triangle on a white background", "yellow"),
    ]:
        on = judge(night.infer(prompt, steps=20, seed=3, progress=False).images[0].image)
        off = judge(model.infer(prompt, steps=20, seed=3, progress=False).images[0].image)
        assert (on.background, on.color) == ("black", color)
        assert (off.background, off.color) == ("white", color)


def test_an_unknown_packaged_adapter_names_the_available_ones(
    models: dict[str, inferkit.Model],
) -> None:
    """inferkit:NAME for a LoRA that is not packaged lists the ones that are."""
    with pytest.raises(inferkit.LoraError, match="inferkit:shapes-night"):
        models["sd1"].with_lora("inferkit:nope")


def test_adapters_reach_fused_attention_projections(
    tiny_paths: dict[str, Path], fp32: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """FastPolicy fuses q/k/v into one layer built from copies; a LoRA on q/k/v still changes
    the image as it does unfused, and the base model's fused weights come back exactly."""
    fast = inferkit.Model.load(
        tiny_paths["sd1"], policy=inferkit.FastPolicy(device="cpu", compile="none")
    )
    path = inferkit.testing.write_lora(tmp_path, fast, "kohya", text_encoder=False)
    before = picture(fast)
    styled = picture(fast.with_lora(path, 2.0))
    unfused = picture(fp32["sd1"].with_lora(path, 2.0))
    assert np.abs(styled - before).mean() > 5
    assert np.abs(styled - unfused).max() <= 2
    assert np.array_equal(picture(fast), before)


def test_a_failed_merge_leaves_the_base_weights(
    models: dict[str, inferkit.Model], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error part way through merging (out of memory, say) puts back every weight already
    changed before it propagates, so nothing is left half merged."""
    model = models["sd1"]
    want = weights_sha256(model)
    view = model.with_lora(inferkit.testing.write_lora(tmp_path, model, "kohya"))
    calls = {"n": 0}
    real = inferkit.lora.LoraAdapter.delta

    def failing(self: object, *args: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:
            raise torch.OutOfMemoryError("injected")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(inferkit.lora.LoraAdapter, "delta", failing)
    with pytest.raises(torch.OutOfMemoryError):
        _ = view.pipeline  # merges the view's adapter
    assert raw_sha256(model) == want  # put back by the failed merge itself
    result = view.infer(PROMPT, steps=1, seed=0, progress=False)  # the next try merges fully
    assert result.params.loras == view.loras
    monkeypatch.undo()
    assert weights_sha256(model) == want


def _renamed(path: Path, out: Path, rename: object) -> Path:
    with SafetensorsFile(path) as f:
        tensors = {rename(k): f.read(k).clone() for k in f.tensors}  # type: ignore[operator]
    write_file(out, tensors)
    return out


def test_older_diffusers_and_text_only_peft_names_merge_like_peft(
    fp32: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """The same tensors under diffusers' older names (processor.to_q_lora, lora_linear_layer)
    or as a PEFT text-encoder adapter (base_model.model.text_model...) give the same image."""
    model = fp32["sd1"]
    peft = inferkit.testing.write_lora(tmp_path, model, "peft")
    want = picture(model.with_lora(peft))

    def old(key: str) -> str:
        key = key.replace(".lora_A.weight", ".down").replace(".lora_B.weight", ".up")
        if key.startswith("unet."):
            stem, _, role = key.rpartition(".")
            head, _, proj = stem.rpartition(".")
            if proj == "0":  # to_out.0
                head, _, proj = head.rpartition(".")
            return f"{head}.processor.{proj}_lora.{role}.weight"
        return key.replace(".down", ".lora_linear_layer.down.weight").replace(
            ".up", ".lora_linear_layer.up.weight"
        )

    older = _renamed(peft, tmp_path / "old.safetensors", old)
    assert picture(model.with_lora(older)).tolist() == want.tolist()
    text_only = _renamed(
        peft,
        tmp_path / "te.safetensors",
        lambda k: (
            k.replace("text_encoder.", "base_model.model.") if k.startswith("text_encoder.") else k
        ),
    )
    assert model.with_lora(text_only).loras[0].unmatched == 0


def test_fully_opaque_rgba_masks_use_their_paint() -> None:
    """An RGBA mask with no transparency (a common editor export) is read by its grey levels:
    white paint is the area to repaint."""
    from PIL import Image

    from inferkit.images import to_mask

    image = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    image.paste((255, 255, 255, 255), (0, 0, 4, 8))
    mask = np.asarray(to_mask(image))
    assert mask[:, :4].min() == 255 and mask[:, 4:].max() == 0


def test_layers_whose_ranks_disagree_are_refused_when_read(
    models: dict[str, inferkit.Model], tmp_path: Path
) -> None:
    """An up weight of rank 4 paired with a down weight of rank 8 is caught by with_lora,
    before any infer, naming the layer."""
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "ranks.safetensors"
    write_file(
        path,
        {
            f"{name}.lora_up.weight": torch.zeros(32, 4),
            f"{name}.lora_down.weight": torch.zeros(8, 32),
        },
    )
    with pytest.raises(inferkit.LoraError, match="do not fit together") as e:
        models["sd1"].with_lora(path)
    assert name in str(e.value)

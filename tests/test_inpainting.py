"""Inpainting through Model.infer(init_image=..., mask=...): both kinds of checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

import inferkit
import inferkit.testing
from inferkit.images import MASK_THRESHOLD, to_mask
from inferkit.zoo.shapes.checker import judge

# The circle of seed 3 lies inside this box; its edges fall on the 8-pixel latent grid.
BOX = (slice(16, 56), slice(0, 48))


@pytest.fixture(scope="module")
def shapes() -> inferkit.Model:
    return inferkit.Model.load("inferkit:shapes", device="cpu")


@pytest.fixture(scope="module")
def red_circle(shapes: inferkit.Model) -> Image.Image:
    result = shapes.infer("a red circle on a white background", steps=20, seed=3, progress=False)
    image: Image.Image = result.images[0].image
    seen = judge(image)
    assert (seen.color, seen.shape) == ("red", "circle")
    red = np.asarray(image)[..., 0] > 150
    red &= np.asarray(image)[..., 1] < 100
    assert red[BOX].sum() == red.sum()  # the whole circle is inside the box
    return image


@pytest.fixture(scope="module")
def box_mask() -> np.ndarray:
    mask = np.zeros((64, 64), dtype=bool)
    mask[BOX] = True
    return mask


def outside(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels at least ``margin`` pixels away from the mask's box."""
    rows, cols = BOX
    far = np.ones_like(mask)
    far[max(0, rows.start - margin) : rows.stop + margin, cols.start : cols.stop + margin] = False
    return far


@pytest.fixture(scope="session")
def inpainting_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inpainting")
    return {
        arch: inferkit.testing.write_tiny_model(root / arch, arch, inpainting=True)
        for arch in ("sd1", "sdxl")
    }


def noise_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


def test_an_ordinary_checkpoint_repaints_only_the_masked_area(
    shapes: inferkit.Model, red_circle: Image.Image, box_mask: np.ndarray
) -> None:
    """Latent blending on the 4-channel shapes model: the masked circle turns blue as prompted,
    and pixels beyond the mask's blur are the input's own, exactly."""
    result = shapes.infer(
        "a blue circle on a white background",
        init_image=red_circle,
        mask=box_mask,
        steps=20,
        seed=3,
        progress=False,
    )
    out = result.images[0].image
    seen = judge(out)
    assert (seen.color, seen.shape) == ("blue", "circle")
    far = outside(box_mask, margin=3 * result.params.mask_blur)
    assert np.array_equal(np.asarray(out)[far], np.asarray(red_circle)[far])


def test_latent_blending_alone_keeps_the_unmasked_area_close(
    shapes: inferkit.Model, red_circle: Image.Image, box_mask: np.ndarray
) -> None:
    """With keep_unmasked=False the pixels outside the mask are the decoder's, yet stay within
    a small tolerance of the input: the unmasked latents are the input's at every step."""
    result = shapes.infer(
        "a blue circle on a white background",
        init_image=red_circle,
        mask=box_mask,
        keep_unmasked=False,
        steps=20,
        seed=3,
        progress=False,
    )
    after = np.asarray(result.images[0].image, dtype=np.int16)
    before = np.asarray(red_circle, dtype=np.int16)
    diff = np.abs(after - before)[~box_mask]
    assert diff.mean() < 8
    assert diff.max() < 40
    inside = np.abs(after - before)[box_mask]
    assert inside.mean() > 4 * diff.mean()  # the masked area was repainted


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_nine_channel_checkpoint_matches_diffusers_inpainting(
    arch: str, inpainting_paths: dict[str, Path]
) -> None:
    """A 9-channel inpainting UNet gets mask and masked image as input; the pixels equal those
    of diffusers' own inpainting pipeline with the same seed, sampler and strength."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    path = inpainting_paths[arch]
    model = inferkit.Model.load(path, device="cpu", dtype="float32")
    assert model.info.variant == "inpainting"
    init = noise_image()
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 8:40] = True
    got = model.infer(
        "a red circle",
        init_image=init,
        mask=mask,
        strength=1.0,
        steps=4,
        seed=5,
        keep_unmasked=False,
        progress=False,
    )
    cls = StableDiffusionXLInpaintPipeline if arch == "sdxl" else StableDiffusionInpaintPipeline
    pipe = cls.from_pretrained(path, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        "a red circle",
        image=init,
        mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
        strength=1.0,
        num_inference_steps=4,
        guidance_scale=7.0,
        generator=[torch.Generator().manual_seed(5)],
        height=64,
        width=64,
    ).images[0]
    assert np.array_equal(np.asarray(got.images[0].image), np.asarray(want))


def test_the_result_records_the_mask(
    shapes: inferkit.Model, red_circle: Image.Image, box_mask: np.ndarray
) -> None:
    """The mask's fingerprint, blur and paste choice are in the params; infotext has Mask blur."""
    result = shapes.infer(
        "a blue circle", init_image=red_circle, mask=box_mask, steps=4, seed=1, mask_blur=2
    )
    params = result.params
    assert params.mask_sha256 is not None and len(params.mask_sha256) == 64
    assert (params.mask_blur, params.keep_unmasked) == (2, True)
    assert "Mask blur: 2" in result.images[0].infotext
    plain = shapes.infer("a blue circle", init_image=red_circle, steps=4, seed=1)
    assert plain.params.mask_sha256 is None
    assert "Mask blur" not in plain.images[0].infotext
    decoded = shapes.infer(
        "a blue circle", init_image=red_circle, mask=box_mask, steps=4, seed=1, keep_unmasked=False
    )
    assert "Mask blur" not in decoded.images[0].infotext  # no blur was applied


def test_the_mask_follows_the_init_image_when_it_is_resized(shapes: inferkit.Model) -> None:
    """A 70x90 image and its mask are both brought to 64x88; the mask stays where it was."""
    init = Image.new("RGB", (90, 70), "white")
    mask = np.zeros((70, 90), dtype=bool)
    mask[:, 45:] = True
    result = shapes.infer("a red square", init_image=init, mask=mask, steps=4, seed=1)
    assert (result.params.width, result.params.height) == (88, 64)
    assert any("resized" in w for w in result.warnings)


def test_a_mask_without_an_init_image_is_refused(
    shapes: inferkit.Model, box_mask: np.ndarray
) -> None:
    """Inpainting repaints part of an image: a mask alone names init_image as the fix."""
    with pytest.raises(inferkit.InvalidParameterError, match="init_image") as e:
        shapes.infer("a red circle", mask=box_mask)
    assert e.value.name == "mask"


def test_an_all_black_mask_is_refused(shapes: inferkit.Model, red_circle: Image.Image) -> None:
    """A mask that marks nothing to repaint is an error, not a silent copy of the input."""
    with pytest.raises(inferkit.InvalidParameterError, match="nothing to repaint") as e:
        shapes.infer("a red circle", init_image=red_circle, mask=np.zeros((64, 64)))
    assert e.value.name == "mask"


def test_a_mask_of_another_size_is_refused(shapes: inferkit.Model, red_circle: Image.Image) -> None:
    """The mask must cover the init image pixel for pixel; the message gives both sizes."""
    with pytest.raises(inferkit.InvalidParameterError, match="64x64") as e:
        shapes.infer("a red circle", init_image=red_circle, mask=np.ones((32, 32), dtype=bool))
    assert e.value.name == "mask"
    assert "32x32" in str(e.value)


def test_an_unreadable_mask_file_is_refused(
    shapes: inferkit.Model, red_circle: Image.Image, tmp_path: Path
) -> None:
    """A mask path that is not an image names the mask argument and the file."""
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(inferkit.InvalidParameterError, match=r"mask\.png") as e:
        shapes.infer("a red circle", init_image=red_circle, mask=bad)
    assert e.value.name == "mask"


def test_an_inpainting_checkpoint_without_a_mask_asks_for_one(
    inpainting_paths: dict[str, Path],
) -> None:
    """A 9-channel model cannot start from noise alone; the error says to pass a mask."""
    model = inferkit.Model.load(inpainting_paths["sd1"], device="cpu")
    with pytest.raises(inferkit.InvalidParameterError, match="inpainting checkpoint") as e:
        model.infer("a red circle", init_image=noise_image())
    assert e.value.name == "mask"


def test_guidance_rescale_is_refused_when_inpainting_sd1(
    shapes: inferkit.Model, red_circle: Image.Image, box_mask: np.ndarray
) -> None:
    """diffusers' SD 1.x/2.x inpainting has no guidance rescale: refused, not ignored."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        shapes.infer("x", init_image=red_circle, mask=box_mask, guidance_rescale=0.5)
    assert e.value.name == "guidance_rescale"


def test_mask_forms_mean_the_same(tmp_path: Path) -> None:
    """A bool array, a 0..1 float array, an RGB array, an L image, a file, and an RGBA image
    whose transparent pixels mark the area all give the same mask."""
    area = np.zeros((16, 16), dtype=bool)
    area[4:12, 2:9] = True
    want = np.asarray(to_mask(area))
    grey = Image.fromarray(area.astype(np.uint8) * 255, mode="L")
    grey.save(tmp_path / "mask.png")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    rgba.putalpha(Image.fromarray(np.where(area, 0, 255).astype(np.uint8), mode="L"))
    rgba.save(tmp_path / "alpha.png")
    forms = [
        area.astype(np.float32),
        np.repeat(area[..., None].astype(np.uint8) * 255, 3, axis=2),
        grey,
        tmp_path / "mask.png",
        str(tmp_path / "mask.png"),
        rgba,
        tmp_path / "alpha.png",
    ]
    for form in forms:
        assert np.array_equal(np.asarray(to_mask(form)), want), type(form)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_grey_levels_split_at_the_threshold(grey: np.ndarray) -> None:
    """Any grey array gives white exactly where it is at least the threshold, or, with nothing
    that bright, a typed error; never an exception from numpy or PIL."""
    if not (grey >= MASK_THRESHOLD).any():
        with pytest.raises(inferkit.InvalidParameterError):
            to_mask(grey)
        return
    assert np.array_equal(np.asarray(to_mask(grey)) == 255, grey >= MASK_THRESHOLD)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.integers(),
        st.text(max_size=5),
        arrays(np.float64, st.integers(1, 4).map(lambda n: (2,) * n)),
        arrays(np.int64, (3, 4, 5)),
    )
)
def test_any_bad_mask_value_is_a_typed_error(value: object) -> None:
    """Integers, odd strings and arrays of the wrong rank raise InvalidParameterError."""
    try:
        mask = to_mask(value)
    except inferkit.InvalidParameterError as e:
        assert e.name == "mask"
        return
    assert mask.mode == "L"


def test_tiny_inpainting_models_are_written_in_the_inpainting_pipeline_format() -> None:
    """write_tiny_model(inpainting=True) writes a 9-channel UNet under the inpainting class."""
    import json

    path = inferkit.testing.write_tiny_model(tempfile.mkdtemp(), "sd1", inpainting=True)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert json.loads((path / "unet" / "config.json").read_text())["in_channels"] == 9

"""Image-to-image through Model.infer(init_image=..., strength=...) and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inferkit
from inferkit.zoo.shapes.checker import judge


@pytest.fixture(scope="module")
def shapes() -> inferkit.Model:
    return inferkit.Model.load("inferkit:shapes", device="cpu")


@pytest.fixture(scope="module")
def red_circle(shapes: inferkit.Model) -> object:
    image = shapes.infer("a red circle on a white background", steps=20, seed=3, progress=False)
    seen = judge(image.images[0].image)
    assert (seen.color, seen.shape) == ("red", "circle")
    return image.images[0].image


def test_a_blue_prompt_at_high_strength_turns_the_red_circle_blue(
    shapes: inferkit.Model, red_circle: object
) -> None:
    """The trained model repaints a red circle blue when asked, keeping the shape, and runs
    round(steps * strength) steps."""
    result = shapes.infer(
        "a blue circle on a white background",
        init_image=red_circle,
        strength=0.8,
        steps=20,
        seed=3,
        progress=False,
    )
    seen = judge(result.images[0].image)
    assert (seen.color, seen.shape) == ("blue", "circle")
    assert result.params.denoising_steps == 16
    assert result.params.strength == 0.8


def test_a_low_strength_with_the_same_prompt_keeps_the_image(
    shapes: inferkit.Model, red_circle: object
) -> None:
    """Two steps from the end of the schedule change little beyond the VAE's own round trip."""
    result = shapes.infer(
        "a red circle on a white background",
        init_image=red_circle,
        strength=0.1,
        steps=20,
        seed=3,
        progress=False,
    )
    before = np.asarray(red_circle, dtype=np.float64)
    after = np.asarray(result.images[0].image, dtype=np.float64)
    assert np.abs(before - after).mean() < 10
    assert result.params.denoising_steps == 2


def test_steps_run_is_round_steps_times_strength(sd1: inferkit.Model) -> None:
    """0.6 x 30 is 17.999... in floating point; 18 steps run all the same (diffusers alone
    would run 17). Euler runs one model call per step (PNDM's warm-up adds one)."""
    start = np.full((64, 64, 3), 128, dtype=np.uint8)
    result = sd1.infer(
        "a cat",
        init_image=start,
        strength=0.6,
        steps=30,
        seed=1,
        scheduler="euler",
        progress=False,
    )
    assert result.params.denoising_steps == 18


def test_paths_arrays_and_pil_images_give_the_same_result(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """An init image may be a PIL image, a path or an array; all three give the same pixels."""
    from PIL import Image

    array = (np.indices((64, 64)).sum(0) % 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    pil = Image.fromarray(array)
    pil.save(tmp_path / "init.png")
    outs = [
        sd1.infer("a cat", init_image=value, strength=0.5, steps=4, seed=2, progress=False)
        for value in (pil, tmp_path / "init.png", array)
    ]
    first = outs[0].images[0].image.tobytes()
    assert all(o.images[0].image.tobytes() == first for o in outs)
    assert len({o.params.init_image_sha256 for o in outs}) == 1


def test_sizes_off_the_vae_grid_are_resized_with_a_note(sd1: inferkit.Model) -> None:
    """A 70x75 image becomes 64x72 (its size rounded down to multiples of 8), and the result
    says so; an explicit width and height win."""
    start = np.zeros((75, 70, 3), dtype=np.uint8)
    result = sd1.infer("a cat", init_image=start, strength=0.5, steps=2, seed=1, progress=False)
    assert result.images[0].image.size == (64, 72)
    assert any("resized from 70x75 to 64x72" in w for w in result.warnings)
    sized = sd1.infer(
        "a cat", init_image=start, width=32, height=32, strength=0.5, steps=2, progress=False
    )
    assert sized.images[0].image.size == (32, 32)


def test_sdxl_runs_image_to_image(models: dict[str, inferkit.Model]) -> None:
    """The SDXL family has its own image-to-image pipeline over the same modules."""
    start = np.full((64, 64, 3), 200, dtype=np.uint8)
    result = models["sdxl"].infer(
        "a cat", init_image=start, strength=0.5, steps=4, seed=1, progress=False
    )
    assert result.params.denoising_steps == 2
    assert result.images[0].image.size == (64, 64)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"strength": 0.0}, "strength"),
        ({"strength": 0.01}, "strength"),
        ({"init_image": 3}, "init_image"),
        ({"init_image": "missing.png"}, "init_image"),
        ({"init_image": np.zeros((8, 8))}, "init_image"),
        ({"variation_strength": 0.5, "mask": np.ones((64, 64), bool)}, "variation_strength"),
    ],
)
def test_bad_image_to_image_arguments_are_refused_by_name(
    sd1: inferkit.Model, changes: dict[str, object], name: str
) -> None:
    """Strength that leaves no step, unreadable images and unsupported combinations are
    InvalidParameterErrors naming the argument, raised before any model work."""
    args: dict[str, object] = {
        "init_image": np.zeros((64, 64, 3), dtype=np.uint8),
        "strength": 0.5,
        "steps": 10,
        "progress": False,
    }
    args.update(changes)
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        sd1.infer("a cat", **args)  # type: ignore[arg-type]
    assert caught.value.name == name


def test_strength_and_init_image_are_recorded_in_the_png(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """The PNG says "Denoising strength" as AUTOMATIC1111 does; the record keeps the strength
    and a fingerprint of the init image."""
    start = np.zeros((64, 64, 3), dtype=np.uint8)
    result = sd1.infer("a cat", init_image=start, strength=0.5, steps=4, seed=1, progress=False)
    meta = inferkit.read_metadata(result.images[0].save(tmp_path / "out.png"))
    assert meta.infotext is not None and "Denoising strength: 0.5" in meta.infotext
    assert meta.record is not None
    assert meta.record["params"]["strength"] == 0.5
    assert len(meta.record["params"]["init_image_sha256"]) == 64


def test_the_sdxl_refiner_refines_an_init_image_as_diffusers_does(
    models: dict[str, inferkit.Model], tiny_paths: dict[str, Path]
) -> None:
    """The refiner runs image-to-image on its own pipeline (one text encoder, aesthetic-score
    conditioning); its pixels equal diffusers' with the same seed and step count."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    refiner = models["sdxl_refiner"]
    init = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    got = refiner.infer("a red circle", init_image=init, strength=0.3, steps=10, seed=5)
    assert got.params.denoising_steps == 3
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_paths["sdxl_refiner"], torch_dtype=refiner.pipeline.unet.dtype
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = type(refiner.pipeline.scheduler).from_config(refiner.pipeline.scheduler.config)
    want = pipe(
        "a red circle",
        image=init,
        strength=0.35,  # diffusers runs int(10 * 0.35) = 3 steps
        num_inference_steps=10,
        guidance_scale=7.0,
        generator=[torch.Generator().manual_seed(5)],
    ).images[0]
    assert np.array_equal(np.asarray(got.images[0].image), np.asarray(want))


def test_variation_seeds_blend_the_noise_image_to_image_adds(
    shapes: inferkit.Model, red_circle: object
) -> None:
    """With init_image, variation strength 0 is the plain image-to-image result, 1 is (within
    the VAE's own sampling noise) the variation seed's, and values between give a nearby image
    recorded with its variation seed."""

    def run(seed: int, **extra: object) -> tuple[np.ndarray, inferkit.InferenceResult]:
        result = shapes.infer(
            "a blue circle on a white background",
            init_image=red_circle,
            strength=0.8,
            steps=20,
            seed=seed,
            progress=False,
            **extra,
        )
        return np.asarray(result.images[0].image, dtype=np.int16), result

    plain, _ = run(3)
    other, _ = run(9)
    none, _ = run(3, variation_seed=9, variation_strength=0.0)
    half, result = run(3, variation_seed=9, variation_strength=0.5)
    full, _ = run(3, variation_seed=9, variation_strength=1.0)
    assert np.array_equal(none, plain)
    assert np.abs(full - other).max() <= 3  # the VAE's latent sample is still seed 3's
    assert np.abs(half - plain).mean() > 1 and np.abs(half - other).mean() > 1
    assert "Variation seed: 9" in result.images[0].infotext
    assert (result.params.variation_seed, result.params.strength) == (9, 0.8)

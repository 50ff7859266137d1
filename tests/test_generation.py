"""Model.infer: seeds, batches, sizes, progress, cancellation, threads, closing."""

from __future__ import annotations

import threading
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from tests.conftest import pixels

import inferkit


def test_image_i_uses_seed_plus_i(sd1: inferkit.Model) -> None:
    """Image i of a call with seed s is made with seed s+i, and says so."""
    result = sd1.infer("a cat", steps=2, seed=41, images=3, progress=False)
    assert result.seeds == (41, 42, 43)
    assert [im.index for im in result.images] == [0, 1, 2]
    assert result.params.seeds == (41, 42, 43)


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_sde"])
def test_an_image_is_the_same_alone_or_in_a_batch(
    models: dict[str, inferkit.Model], arch: str, scheduler: str
) -> None:
    """An image's pixels depend on its seed only, not on the batch it was made in."""
    model = models[arch]
    batch = model.infer("a cat", steps=3, seed=10, images=3, scheduler=scheduler, progress=False)
    alone = model.infer("a cat", steps=3, seed=11, scheduler=scheduler, progress=False)
    assert pixels(batch.images[1]) == pixels(alone.images[0])
    assert pixels(batch.images[0]) != pixels(batch.images[1])


def test_batched_policy_matches_closely(sd1_path: Path) -> None:
    """max_batch > 1 denoises together; images stay within rounding of the exact path."""
    exact = inferkit.Model.load(sd1_path)
    batched = inferkit.Model.load(sd1_path, policy=inferkit.DevicePolicy(max_batch=4))
    a = exact.infer("a cat", steps=3, seed=5, images=3, progress=False)
    b = batched.infer("a cat", steps=3, seed=5, images=3, progress=False)
    for x, y in zip(a.images, b.images, strict=True):
        diff = np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int))
        assert diff.max() <= 2


def test_repeated_calls_give_identical_pixels(sd1: inferkit.Model) -> None:
    """The same parameters give the same pixels on every call."""
    params = inferkit.GenerationParams("a cat", steps=3, seed=99, scheduler="euler_a")
    first = sd1.infer(params, progress=False)
    second = sd1.infer(params, progress=False)
    assert pixels(first.images[0]) == pixels(second.images[0])


def test_different_seeds_give_different_images(sd1: inferkit.Model) -> None:
    """Seeds matter."""
    a = sd1.infer("a cat", steps=2, seed=1, progress=False)
    b = sd1.infer("a cat", steps=2, seed=2, progress=False)
    assert pixels(a.images[0]) != pixels(b.images[0])


def test_seed_none_draws_one_and_records_it(sd1: inferkit.Model) -> None:
    """Without a seed one is drawn, recorded, and reproduces the image."""
    result = sd1.infer("a cat", steps=2, progress=False)
    again = sd1.infer("a cat", steps=2, seed=result.params.seed, progress=False)
    assert pixels(again.images[0]) == pixels(result.images[0])


def test_largest_seed_wraps_for_the_next_image(sd1: inferkit.Model) -> None:
    """Seeds wrap at 2**64: the image after seed 2**64-1 uses seed 0."""
    result = sd1.infer("a cat", steps=2, seed=2**64 - 1, images=2, progress=False)
    zero = sd1.infer("a cat", steps=2, seed=0, progress=False)
    assert result.seeds == (2**64 - 1, 0)
    assert pixels(result.images[1]) == pixels(zero.images[0])


def test_params_object_is_reusable_and_overridable(sd1: inferkit.Model) -> None:
    """A GenerationParams can be passed as is, with keyword overrides, or evolved."""
    base = inferkit.GenerationParams("a cat", steps=2, seed=3)
    assert sd1.infer(base, progress=False).params.seed == 3
    assert sd1.infer(base, seed=4, progress=False).params.seed == 4
    assert sd1.infer(attrs.evolve(base, images=2), progress=False).seeds == (3, 4)


def test_unknown_keyword_names_the_closest_parameter(sd1: inferkit.Model) -> None:
    """A typo in a keyword is an InvalidParameterError that suggests the right name."""
    with pytest.raises(inferkit.InvalidParameterError, match="'steps'") as e:
        sd1.infer("a cat", step=3)
    assert e.value.name == "step"


def test_resolved_params_record_everything(sd1: inferkit.Model) -> None:
    """The result's params hold the defaults that were filled in and the run's choices."""
    r = sd1.infer("a cat", steps=3, seed=1, scheduler="DPM++ 2M Karras", progress=False).params
    assert (r.width, r.height) == (sd1.native_size, sd1.native_size)
    assert (r.scheduler, r.scheduler_label) == ("dpmpp_2m_karras", "DPM++ 2M Karras")
    assert (r.device, r.dtype, r.vae_dtype, r.noise) == ("cpu", "float32", "float32", "cpu")
    assert r.denoising_steps == 3


def test_heun_records_its_extra_model_evaluations(sd1: inferkit.Model) -> None:
    """Second-order samplers run more loop iterations than steps; the result says how many."""
    r = sd1.infer("a cat", steps=3, seed=1, scheduler="heun", progress=False).params
    assert r.steps == 3 and r.denoising_steps == 5


@pytest.mark.parametrize(("width", "height"), [(72, 64), (64, 40), (128, 96)])
def test_sizes_are_multiples_of_the_vae_factor(
    sd1: inferkit.Model, width: int, height: int
) -> None:
    """Sizes that are multiples of 8 work; others are refused, naming the size and the factor."""
    if width % 8 or height % 8:
        bad = "width" if width % 8 else "height"
        with pytest.raises(inferkit.InvalidParameterError) as e:
            sd1.infer("a cat", width=width, height=height, steps=2)
        assert e.value.name == bad and "multiple of 8" in str(e.value)
    else:
        result = sd1.infer("a cat", width=width, height=height, steps=2, seed=0, progress=False)
        assert result.images[0].image.size == (width, height)


def test_noise_is_independent_of_dtype(sd1_path: Path) -> None:
    """CPU noise is drawn in float32 and cast, so half precision starts from the same noise."""
    from inferkit.seeds import generators, initial_noise

    a = initial_noise(generators([5]), (4, 8, 8), device="cpu", dtype=__import__("torch").float32)
    b = initial_noise(generators([5]), (4, 8, 8), device="cpu", dtype=__import__("torch").bfloat16)
    assert (a.bfloat16() == b).all()


def test_device_noise_is_an_option(sd1: inferkit.Model) -> None:
    """noise='device' draws on the model's device (the same as CPU here) and is recorded."""
    result = sd1.infer("a cat", steps=2, seed=8, noise="device", progress=False)
    assert result.params.noise == "device"


def test_timings_add_up(sd1: inferkit.Model) -> None:
    """Each stage is timed and the stages fit within the total."""
    t = sd1.infer("a cat", steps=2, seed=1, progress=False).timings
    assert min(t.text_encoding, t.denoising, t.decoding) > 0
    assert t.text_encoding + t.denoising + t.decoding <= t.total + 1e-6


def test_step_callback_receives_typed_progress(sd1: inferkit.Model) -> None:
    """The callback gets a StepInfo per step, counting across all images."""
    seen: list[inferkit.StepInfo] = []
    sd1.infer(
        "a cat", steps=3, seed=1, images=2, scheduler="euler", callback=seen.append, progress=False
    )
    assert [s.step for s in seen] == [1, 2, 3, 4, 5, 6]
    assert all(s.total == 6 for s in seen)
    assert seen[-1].fraction == 1.0
    assert all(s.elapsed >= 0 for s in seen) and seen[0].timestep > seen[1].timestep


def test_callback_returning_false_cancels(sd1: inferkit.Model) -> None:
    """Returning False from the callback raises InferenceCancelled with how far it got."""
    with pytest.raises(inferkit.InferenceCancelled) as e:
        sd1.infer(
            "a cat",
            steps=5,
            seed=1,
            scheduler="euler",
            callback=lambda s: s.step < 2,
            progress=False,
        )
    assert (e.value.step, e.value.total) == (2, 5)


def test_callback_raising_cancelled_is_reported_with_progress(sd1: inferkit.Model) -> None:
    """Raising InferenceCancelled inside the callback also cancels, with the real step count."""

    def stop(step: inferkit.StepInfo) -> None:
        if step.step == 3:
            raise inferkit.InferenceCancelled(0, 0)

    with pytest.raises(inferkit.InferenceCancelled) as e:
        sd1.infer(
            "a cat", steps=4, seed=1, images=2, scheduler="euler", callback=stop, progress=False
        )
    assert (e.value.step, e.value.total) == (3, 8)


def test_model_still_works_after_a_cancelled_call(sd1: inferkit.Model) -> None:
    """Cancelling leaves the model usable and results unchanged."""
    before = sd1.infer("a cat", steps=3, seed=1, progress=False)
    with pytest.raises(inferkit.InferenceCancelled):
        sd1.infer("a cat", steps=3, seed=1, callback=lambda s: False, progress=False)
    after = sd1.infer("a cat", steps=3, seed=1, progress=False)
    assert pixels(before.images[0]) == pixels(after.images[0])


def test_progress_bar_is_drawn_on_request(
    sd1: inferkit.Model, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=True draws a tqdm bar on stderr; progress=False draws nothing."""
    sd1.infer("a cat", steps=2, seed=1, progress=False)
    assert "step" not in capsys.readouterr().err
    sd1.infer("a cat", steps=2, seed=1, progress=True)
    assert "inferkit" in capsys.readouterr().err


def test_ignored_negative_prompt_is_a_recorded_warning(sd1: inferkit.Model) -> None:
    """A negative prompt with guidance <= 1 has no effect, and the result says so."""
    result = sd1.infer("a cat", negative_prompt="dog", guidance=1.0, steps=2, progress=False)
    assert any("negative_prompt is ignored" in w for w in result.warnings)


def test_long_prompts_are_encoded_whole_not_cut(models: dict[str, inferkit.Model]) -> None:
    """Words after the 75th token change the image (they are encoded in a second chunk, not
    dropped), for the SD and SDXL families; the token count is recorded."""
    head = "a " * 80  # "a" and "red" are one token each in the tiny models' vocabulary
    for arch in ("sd1", "sdxl"):
        model = models[arch]
        a = model.infer(head + "red", steps=2, seed=1, progress=False)
        b = model.infer(head + "blue", steps=2, seed=1, progress=False)
        assert a.images[0].image.tobytes() != b.images[0].image.tobytes(), arch
        assert a.params.prompt_tokens == 81
        assert not a.warnings


def test_long_prompt_chunks_are_padded_to_match(sd1: inferkit.Model) -> None:
    """A long negative prompt with a short prompt (and the reverse) runs: both sides get the
    same number of 75-token chunks."""
    from inferkit.prompts import encode_long

    out = encode_long(sd1.pipeline, "sd1", "a cat", "a " * 160, torch.device("cpu"), True)
    assert out["prompt_embeds"].shape[1] == out["negative_prompt_embeds"].shape[1] == 3 * 77
    r = sd1.infer("a cat", negative_prompt="a " * 160, steps=2, seed=1, progress=False)
    assert r.params.negative_prompt_tokens == 160


def test_prompts_within_the_window_take_diffusers_path_unchanged(sd1: inferkit.Model) -> None:
    """A 75-token prompt is encoded by diffusers' own encoder, giving the same embeddings as
    the chunked encoder's single chunk."""
    from inferkit.prompts import encode_long

    prompt = "a " * 75
    pipe = sd1.pipeline
    ours = encode_long(pipe, "sd1", prompt, "", torch.device("cpu"), True)["prompt_embeds"]
    theirs, _ = pipe.encode_prompt(prompt, torch.device("cpu"), 1, True)
    assert torch.equal(ours, theirs)


def test_two_threads_get_the_results_they_would_get_alone(sd1: inferkit.Model) -> None:
    """Concurrent infer calls on one Model each get the correct images."""
    expected = {
        s: pixels(sd1.infer("a cat", steps=3, seed=s, progress=False).images[0]) for s in (1, 2)
    }
    got: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(3):
                got[seed] = pixels(sd1.infer("a cat", steps=3, seed=seed, progress=False).images[0])
                assert got[seed] == expected[seed]
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == expected


def test_closed_model_refuses_to_run(sd1_path: Path) -> None:
    """After close() (or leaving a with block) infer raises ModelClosedError."""
    with inferkit.Model.load(sd1_path) as model:
        model.infer("a cat", steps=1, seed=1, progress=False)
    assert model.closed
    with pytest.raises(inferkit.ModelClosedError, match="closed"):
        model.infer("a cat", steps=1)
    model.close()  # closing twice is harmless
    assert "closed" in repr(model)


def test_close_frees_the_networks(sd1_path: Path) -> None:
    """close() drops the model's references to its networks so their memory can be freed."""
    import gc
    import weakref

    model = inferkit.Model.load(sd1_path)
    unet = weakref.ref(model.pipeline.unet)
    model.close()
    gc.collect()
    assert unet() is None


def test_grid_lays_images_out_row_by_row(sd1: inferkit.Model) -> None:
    """result.grid(cols=2) puts image 0 top-left, image 1 top-right, image 2 bottom-left, and
    fills the empty cell with the background."""
    result = sd1.infer("a cat", steps=2, seed=5, images=3, progress=False)
    sheet = result.grid(cols=2, gap=2)
    w, h = result.images[0].image.size
    assert sheet.size == (2 * w + 3 * 2, 2 * h + 3 * 2)
    for i, (x, y) in enumerate([(2, 2), (4 + w, 2), (2, 4 + h)]):
        cell = sheet.crop((x, y, x + w, y + h))
        assert cell.tobytes() == result.images[i].image.convert("RGB").tobytes()
    empty = sheet.crop((4 + w, 4 + h, 4 + 2 * w, 4 + 2 * h))
    assert set(empty.getdata()) == {(255, 255, 255)}


def test_grid_defaults_to_a_square_sheet_and_checks_its_arguments(sd1: inferkit.Model) -> None:
    """Without cols the sheet is ceil(sqrt(n)) wide; bad counts are refused by name."""
    result = sd1.infer("a cat", steps=2, seed=5, images=4, progress=False)
    w, h = result.images[0].image.size
    assert result.grid().size == (2 * w, 2 * h)
    for name, value in (("cols", 0), ("cols", 1.5), ("gap", -1)):
        with pytest.raises(inferkit.InvalidParameterError) as caught:
            result.grid(**{name: value})
        assert caught.value.name == name


def test_variation_strength_zero_and_one_give_the_two_seeds_images(sd1: inferkit.Model) -> None:
    """Strength 0 is the seed's image and strength 1 the variation seed's, pixel for pixel;
    0.5 is neither."""
    args = {"steps": 3, "scheduler": "euler", "progress": False}
    plain = sd1.infer("a cat", seed=10, **args).images[0].image
    other = sd1.infer("a cat", seed=99, **args).images[0].image
    at = {
        s: sd1.infer("a cat", seed=10, variation_seed=99, variation_strength=s, **args)
        for s in (0.0, 0.5, 1.0)
    }
    assert at[0.0].images[0].image.tobytes() == plain.tobytes()
    assert at[1.0].images[0].image.tobytes() == other.tobytes()
    middle = at[0.5].images[0].image.tobytes()
    assert middle not in (plain.tobytes(), other.tobytes())
    assert at[0.0].params.variation_seed is None  # nothing was blended, nothing is recorded
    assert (at[0.5].params.variation_seed, at[0.5].params.variation_strength) == (99, 0.5)


def test_variation_seeds_advance_per_image_and_are_batch_independent(sd1: inferkit.Model) -> None:
    """Image i blends seed s+i with variation seed v+i, so the second image of a call equals
    that image made alone."""
    args = {"steps": 3, "variation_strength": 0.3, "progress": False}
    pair = sd1.infer("a cat", seed=20, variation_seed=50, images=2, **args)
    alone = sd1.infer("a cat", seed=21, variation_seed=51, **args)
    assert pair.images[1].image.tobytes() == alone.images[0].image.tobytes()


def test_variation_seed_is_drawn_and_recorded_in_the_png(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """With a strength but no variation seed one is drawn; both land in the PNG, in
    AUTOMATIC1111's infotext fields and in the JSON record."""
    result = sd1.infer("a cat", steps=2, seed=1, images=2, variation_strength=0.25, progress=False)
    drawn = result.params.variation_seed
    assert drawn is not None
    meta = inferkit.read_metadata(result.images[1].save(tmp_path / "v.png"))
    assert meta.infotext is not None
    assert f"Variation seed: {(drawn + 1) % 2**64}, Variation seed strength: 0.25" in meta.infotext
    assert meta.record is not None and meta.record["params"]["variation_seed"] == drawn
    assert (meta.variation_seed, meta.variation_strength) == ((drawn + 1) % 2**64, 0.25)
    from inferkit.metadata import parse_infotext

    parsed = parse_infotext(meta.infotext)
    assert (parsed.variation_seed, parsed.variation_strength) == ((drawn + 1) % 2**64, 0.25)


def test_variations_of_a_trained_model_stay_close_to_the_original() -> None:
    """On the shapes model a small strength keeps the judged colour and shape and changes few
    pixels; strength 1 gives the variation seed's own image."""
    from inferkit.zoo.shapes.checker import judge

    model = inferkit.Model.load("inferkit:shapes", device="cpu")
    args = {"steps": 20, "progress": False}
    base = model.infer("a green square on a white background", seed=4, **args).images[0].image
    near = (
        model.infer(
            "a green square on a white background",
            seed=4,
            variation_seed=77,
            variation_strength=0.1,
            **args,
        )
        .images[0]
        .image
    )
    seen = judge(near)
    assert (seen.color, seen.shape) == ("green", "square")
    diff = np.abs(np.asarray(base, dtype=float) - np.asarray(near, dtype=float)).mean()
    assert 0 < diff < 20

"""GenerationParams validates every field up front and names the field in its error."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import inferkit

SCHEDULER_NAMES = [spec.name for spec in inferkit.samplers()]


def test_defaults_are_filled_and_prompt_is_positional() -> None:
    """A prompt alone is a complete request with documented defaults."""
    p = inferkit.GenerationParams("a cat")
    assert (p.steps, p.seed, p.images, p.guidance, p.noise) == (30, None, 1, 7.0, "cpu")


def test_params_are_immutable_and_vary_with_evolve() -> None:
    """Parameters are frozen; attrs.evolve makes a validated variant."""
    p = inferkit.GenerationParams("a cat", seed=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.seed = 2  # type: ignore[misc]
    assert attrs.evolve(p, seed=2).seed == 2
    with pytest.raises(inferkit.InvalidParameterError):
        attrs.evolve(p, steps=0)


@given(st.integers(max_value=0))
def test_steps_below_one_are_refused(steps: int) -> None:
    """steps must be >= 1; the error carries the name and the value."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", steps=steps)
    assert (e.value.name, e.value.value) == ("steps", steps)
    assert ">= 1" in str(e.value)


@given(st.integers(min_value=1, max_value=10_000))
def test_any_positive_step_count_is_accepted(steps: int) -> None:
    """Every positive integer is a valid step count."""
    assert inferkit.GenerationParams("x", steps=steps).steps == steps


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64)))
def test_seeds_outside_64_bits_are_refused(seed: int) -> None:
    """Seeds are integers in [0, 2**64)."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", seed=seed)
    assert e.value.name == "seed"


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_64_bit_seed_is_accepted(seed: int) -> None:
    """Every integer in [0, 2**64) is a seed."""
    assert inferkit.GenerationParams("x", seed=seed).seed == seed


@given(
    st.one_of(
        st.floats(max_value=-1e-9),
        st.just(math.nan),
        st.just(math.inf),
        st.text(max_size=3),
        st.booleans(),
    )
)
def test_guidance_must_be_a_finite_non_negative_number(value: object) -> None:
    """guidance is a finite number >= 0; anything else names 'guidance'."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", guidance=value)  # type: ignore[arg-type]
    assert e.value.name == "guidance"


@given(st.sampled_from(["width", "height"]), st.one_of(st.integers(max_value=0), st.floats()))
def test_sizes_must_be_positive_integers(name: str, value: object) -> None:
    """width/height are positive integers (the model checks its VAE factor later)."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", **{name: value})
    assert e.value.name == name
    assert "multiple" in e.value.allowed


@given(st.one_of(st.integers(max_value=0), st.booleans(), st.floats()))
def test_images_must_be_a_positive_integer(value: object) -> None:
    """images >= 1; booleans and floats are not counts."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", images=value)  # type: ignore[arg-type]
    assert e.value.name == "images"


@given(st.one_of(st.none(), st.integers(), st.binary()))
def test_prompt_must_be_text(value: object) -> None:
    """The prompt is a string."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams(value)  # type: ignore[arg-type]
    assert e.value.name == "prompt"


@given(st.sampled_from(SCHEDULER_NAMES))
def test_every_registered_sampler_name_is_accepted(name: str) -> None:
    """Each registered sampler's canonical name validates."""
    assert inferkit.GenerationParams("x", scheduler=name).scheduler == name


def test_unknown_scheduler_suggests_close_names() -> None:
    """A misspelt sampler raises UnknownSchedulerError (a ValueError and a KeyError) with hints."""
    with pytest.raises(inferkit.UnknownSchedulerError) as e:
        inferkit.GenerationParams("x", scheduler="DPM++ 2N Karras")
    assert isinstance(e.value, ValueError) and isinstance(e.value, KeyError)
    assert "dpmpp_2m_karras" in e.value.suggestions
    assert "inferkit schedulers" in str(e.value)


def test_schedule_without_scheduler_is_refused() -> None:
    """A schedule needs a sampler to apply to."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", schedule="karras")
    assert e.value.name == "schedule"


def test_noise_source_is_cpu_or_device() -> None:
    """noise is 'cpu' or 'device'."""
    assert inferkit.GenerationParams("x", noise="device").noise == "device"
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.GenerationParams("x", noise="gpu")  # type: ignore[arg-type]
    assert e.value.name == "noise"


@given(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.000001), st.just(float("nan"))))
def test_variation_strength_outside_zero_to_one_is_refused(value: float) -> None:
    """variation_strength is a fraction of the way to the variation seed's noise."""
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.GenerationParams("a cat", variation_strength=value)
    assert caught.value.name == "variation_strength"


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64)))
def test_variation_seed_outside_64_bits_is_refused(value: int) -> None:
    """A variation seed follows the same rules as a seed."""
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.GenerationParams("a cat", variation_seed=value)
    assert caught.value.name == "variation_seed"

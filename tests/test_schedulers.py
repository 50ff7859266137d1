"""The sampler registry: names users type, schedules, and pixel-equality with plain diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import inferkit
from inferkit.schedulers import normalize_name

A1111_NAMES = {
    "Euler": "euler",
    "Euler a": "euler_a",
    "Heun": "heun",
    "LMS": "lms",
    "DPM2": "dpm2",
    "DPM2 a": "dpm2_a",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ SDE": "dpmpp_sde",
    "DDIM": "ddim",
    "UniPC": "unipc",
    "LCM": "lcm",
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "DPM++ SDE Karras": "dpmpp_sde_karras",
    "Euler Exponential": "euler_exponential",
}
COMFY_NAMES = {
    ("euler_ancestral", "normal"): "euler_a",
    ("dpmpp_2m", "karras"): "dpmpp_2m_karras",
    ("dpmpp_2m_sde", "exponential"): "dpmpp_2m_sde_exponential",
    ("dpm_2_ancestral", None): "dpm2_a",
    ("uni_pc", None): "unipc",
    ("lms", "karras"): "lms_karras",
}


def test_registry_has_at_least_twelve_samplers() -> None:
    """At least the twelve samplers users expect are registered."""
    names = {s.name for s in inferkit.samplers()}
    assert set(A1111_NAMES.values()) - names <= {
        "dpmpp_2m_karras",
        "dpmpp_sde_karras",
        "euler_exponential",
    }
    assert len(names) >= 12


@pytest.mark.parametrize(("typed", "canonical"), sorted(A1111_NAMES.items()))
def test_automatic1111_names_resolve(typed: str, canonical: str) -> None:
    """Names as AUTOMATIC1111 shows them resolve to the canonical sampler+schedule."""
    choice = inferkit.resolve_scheduler(typed)
    assert choice.name == canonical
    assert choice.label == typed


@pytest.mark.parametrize(("pair", "canonical"), sorted(COMFY_NAMES.items(), key=str))
def test_comfyui_sampler_and_scheduler_pairs_resolve(
    pair: tuple[str, str | None], canonical: str
) -> None:
    """ComfyUI's sampler_name + scheduler pairs resolve to the same samplers."""
    assert inferkit.resolve_scheduler(*pair).name == canonical


def test_names_ignore_case_spacing_and_punctuation() -> None:
    """'DPM++ 2M Karras', 'dpmpp_2m_karras' and 'dpm++-2m karras' are one sampler."""
    assert normalize_name("DPM++ 2M Karras") == normalize_name("dpm++-2m  karras")
    assert inferkit.resolve_scheduler("dpm++-2m  karras").name == "dpmpp_2m_karras"


def test_unsupported_schedule_names_what_is_supported() -> None:
    """Euler a has no Karras variant in diffusers; the error lists what it supports."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.resolve_scheduler("Euler a", "karras")
    assert e.value.name == "schedule" and "normal" in e.value.allowed


def test_conflicting_schedules_are_refused() -> None:
    """A schedule in the name and a different one given apart is ambiguous."""
    with pytest.raises(inferkit.InvalidParameterError):
        inferkit.resolve_scheduler("DPM++ 2M Karras", "exponential")


def test_users_can_register_a_sampler() -> None:
    """register_scheduler adds a sampler reachable by its name and aliases."""
    spec = inferkit.SamplerSpec("test_ddpm", "Test DDPM", "DDPMScheduler", aliases=("tddpm",))
    inferkit.register_scheduler(spec, replace=True)
    assert inferkit.resolve_scheduler("TDDPM").sampler is spec


def test_registering_a_taken_name_is_refused() -> None:
    """A new sampler cannot silently take an existing sampler's name."""
    with pytest.raises(inferkit.InvalidParameterError):
        inferkit.register_scheduler(inferkit.SamplerSpec("mine", "Euler", "EulerDiscreteScheduler"))


def _plain_diffusers(
    path: Path, arch: str, choice: inferkit.SamplerChoice, seed: int, steps: int
) -> np.ndarray[Any, Any]:
    """Generate with a plain diffusers pipeline, the way its documentation shows."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    options: dict[str, Any] = dict(choice.sampler.options)
    if choice.schedule != "normal":
        options[f"use_{choice.schedule}_sigmas"] = True
    if choice.sampler.name == "dpmpp_sde":
        options["noise_sampler_seed"] = seed
    pipe.scheduler = choice.sampler.scheduler_type().from_config(pipe.scheduler.config, **options)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, 4, 8, 8), generator=generator)
    image = pipe(
        "a red circle on a white background",
        num_inference_steps=steps,
        guidance_scale=6.0,
        latents=latents,
        generator=[generator],
        output_type="pil",
    ).images[0]
    return np.asarray(image)


ORACLE_CASES = [("sd1", s.name, "normal") for s in inferkit.samplers() if s.name.isidentifier()]
ORACLE_CASES = [c for c in ORACLE_CASES if not c[1].startswith("test_")]
ORACLE_CASES += [
    ("sd1", "dpmpp_2m", "karras"),
    ("sd1", "euler", "exponential"),
    ("sd1", "dpmpp_sde", "karras"),
    ("sd2", "euler", "normal"),
    ("sd2", "dpmpp_2m", "karras"),
    ("sdxl", "euler_a", "normal"),
    ("sdxl", "unipc", "normal"),
]


@pytest.mark.parametrize(("arch", "sampler", "schedule"), ORACLE_CASES)
def test_pixels_equal_a_plain_diffusers_pipeline(
    models: dict[str, inferkit.Model],
    tiny_paths: dict[str, Path],
    arch: str,
    sampler: str,
    schedule: str,
) -> None:
    """For each sampler, inferkit's pixels equal plain diffusers' for the same config and noise."""
    choice = inferkit.resolve_scheduler(sampler, schedule)
    result = models[arch].infer(
        "a red circle on a white background",
        steps=5,
        seed=1234,
        guidance=6.0,
        scheduler=sampler,
        schedule=schedule,
        progress=False,
    )
    expected = _plain_diffusers(tiny_paths[arch], arch, choice, 1234, 5)
    got = np.asarray(result.images[0].image)
    assert got.std() > 5, "the tiny model should make a non-flat image"
    np.testing.assert_array_equal(got, expected)

"""The packaged shapes model makes the pictures its prompts ask for, and the checks can fail."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import inferkit
from inferkit.zoo.shapes.checker import judge, score
from inferkit.zoo.shapes.data import BACKGROUNDS, COLORS, SHAPES, caption

# Every colour x shape pair, on alternating backgrounds: 18 prompts.
GRID_PROMPTS = [
    caption(c, s, list(BACKGROUNDS)[(i + j) % 2])
    for i, c in enumerate(COLORS)
    for j, s in enumerate(SHAPES)
]
FAST_PROMPTS = [
    caption("red", "circle", "white"),
    caption("blue", "square", "black"),
    caption("yellow", "triangle", "white"),
    caption("purple", "circle", "black"),
    caption("green", "triangle", "black"),
    caption("orange", "square", "white"),
]
# Settings suited to each family: ancestral/SDE samplers want more steps, second-order ones
# fewer (each step evaluates the model twice), PLMS needs ~100 steps to settle and LMS is only
# stable with Karras sigmas at 20 steps (as in AUTOMATIC1111's "LMS Karras").
STEPS = {"heun": 15, "dpm2": 15, "dpm2_a": 30, "euler_a": 30, "dpmpp_2m_sde": 30, "pndm": 100}
SCHEDULES = {"lms": "karras"}
COLOR_BAR, SHAPE_BAR = 0.9, 0.8


@pytest.fixture(scope="module")
def shapes() -> inferkit.Model:
    return inferkit.Model.load("inferkit:shapes")


def test_packaged_model_loads_offline_as_sd1_family(shapes: inferkit.Model) -> None:
    """inferkit:shapes is a single-file SD1.x-family checkpoint with a 64-pixel native size."""
    info = shapes.info
    assert (info.name, info.architecture, info.prediction_type) == ("shapes", "sd1", "epsilon")
    assert info.loader == "zoo" and shapes.native_size == 64


def test_weights_file_is_small_enough_to_ship() -> None:
    """The packaged checkpoint is at most 10 MB."""
    from inferkit.zoo import zoo_path

    assert zoo_path("shapes").stat().st_size <= 10 * 1024 * 1024


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m_karras", "ddim"])
def test_generated_images_match_their_prompts(shapes: inferkit.Model, scheduler: str) -> None:
    """Colour right in >= 90% and shape right in >= 80% of a small prompt x seed grid."""
    result = score(shapes, FAST_PROMPTS, [11, 12], scheduler=scheduler, steps=20)
    assert result.color >= COLOR_BAR, result.misses
    assert result.shape >= SHAPE_BAR, result.misses


BUILTIN = [s.name for s in inferkit.samplers() if not s.name.startswith("test")]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [name for name in BUILTIN if name != "lcm"])
def test_every_sampler_family_draws_the_prompt(shapes: inferkit.Model, sampler: str) -> None:
    """Over 18 prompts x 2 seeds, every sampler family meets the colour and shape bars."""
    result = score(
        shapes,
        GRID_PROMPTS,
        [1, 2],
        scheduler=inferkit.resolve_scheduler(sampler, SCHEDULES.get(sampler)).name,
        steps=STEPS.get(sampler, 20),
    )
    assert result.color >= COLOR_BAR, result.misses
    assert result.shape >= SHAPE_BAR, result.misses


@pytest.mark.slow
def test_lcm_sampler_gets_colours_right_on_a_non_distilled_model(shapes: inferkit.Model) -> None:
    """LCM is meant for consistency-distilled models; on this one, at 30 steps, it still gets
    the colour right (shapes land near the bar, ~81%, so only colour is required)."""
    result = score(shapes, GRID_PROMPTS, [1, 2], scheduler="lcm", steps=30)
    assert result.color >= COLOR_BAR, result.misses


def test_wrong_prediction_type_fails_the_check() -> None:
    """Flipping the prediction type to v makes the semantic check fail: the test has teeth."""
    from inferkit.zoo import zoo_path

    path = zoo_path("shapes")
    flipped = inferkit.Model.load(path, tokenizer=path.parent / "tokenizer", prediction="v")
    result = score(flipped, FAST_PROMPTS, [11, 12], scheduler="unipc", steps=20)
    assert result.color < COLOR_BAR or result.shape < SHAPE_BAR


def test_broken_sigma_schedule_fails_the_check(shapes: inferkit.Model) -> None:
    """A sampler on a wrong noise schedule (DDPM's linear betas) fails the semantic check."""
    broken = inferkit.SamplerSpec(
        "test_broken_euler",
        "Test broken Euler",
        "EulerDiscreteScheduler",
        options={"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    )
    inferkit.register_scheduler(broken, replace=True)
    result = score(shapes, FAST_PROMPTS, [11, 12], scheduler="test_broken_euler", steps=20)
    assert result.color < COLOR_BAR or result.shape < SHAPE_BAR


def test_readme_command_makes_a_red_circle_quickly(tmp_path: Path) -> None:
    """`inferkit generate inferkit:shapes "a red circle ..." -o circle.png` draws a red circle."""
    out = tmp_path / "circle.png"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "inferkit", "generate", "inferkit:shapes",
         "a red circle on a white background", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    with Image.open(out) as image:
        seen = judge(image)
    assert (seen.color, seen.shape, seen.background) == ("red", "circle", "white")
    print(f"README command took {elapsed:.2f} s")


def test_training_smoke_run_is_deterministic_and_loadable(tmp_path: Path) -> None:
    """A few steps of the training script, run twice with one seed, write identical weights
    that inferkit loads with the written tokenizer. Single-threaded, so that the comparison does
    not depend on how busy the machine is."""
    import json
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    hashes = []
    for run in ("a", "b"):
        out = tmp_path / run
        proc = subprocess.run(
            [sys.executable, "-m", "inferkit.zoo.shapes.train", "--out", str(out),
             "--vae-steps", "3", "--unet-steps", "3", "--per-combo", "2"],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        hashes.append(json.loads((out / "training.json").read_text())["sha256"])
    assert hashes[0] == hashes[1]
    model = inferkit.Model.load(
        tmp_path / "a" / "shapes.safetensors", tokenizer=tmp_path / "a" / "tokenizer"
    )
    assert model.info.architecture == "sd1"
    assert (tmp_path / "a" / "loss.png").exists()

"""The inferkit command, driven through a subprocess as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "inferkit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_generate_writes_pngs_with_metadata(sd1_path: Path, tmp_path: Path) -> None:
    """`inferkit generate` writes one PNG per image with the seeds and settings inside."""
    out = tmp_path / "cat.png"
    proc = run(
        "generate", str(sd1_path), "a cat", "--steps", "3", "--seed", "9", "--images", "2",
        "--scheduler", "DPM++ 2M Karras", "--size", "64x48", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = [tmp_path / "cat-0.png", tmp_path / "cat-1.png"]
    assert [inferkit.read_metadata(f).seed for f in files] == [9, 10]
    meta = inferkit.read_metadata(files[0])
    assert (meta.width, meta.height, meta.sampler) == (64, 48, "dpmpp_2m_karras")
    assert "seed=9" in proc.stdout


def test_generate_matches_the_python_api(sd1_path: Path, tmp_path: Path) -> None:
    """The CLI and Model.infer make the same pixels for the same settings."""
    out = tmp_path / "one.png"
    assert (
        run(
            "generate", str(sd1_path), "a cat", "--steps", "2", "--seed", "4", "-o", str(out)
        ).returncode
        == 0
    )
    expected = inferkit.Model.load(sd1_path).infer("a cat", steps=2, seed=4, progress=False)
    from PIL import Image

    with Image.open(out) as img:
        assert img.convert("RGB").tobytes() == expected.images[0].image.tobytes()


def test_bad_input_exits_nonzero_with_one_line(sd1_path: Path, tmp_path: Path) -> None:
    """Bad arguments give exit status 2 and a single 'inferkit: error:' line, no traceback."""
    cases = [
        ("generate", str(sd1_path), "x", "--scheduler", "eulr a"),
        ("generate", str(sd1_path), "x", "--steps", "0"),
        ("generate", str(sd1_path), "x", "--size", "70x64"),
        ("generate", str(tmp_path / "missing"), "x"),
        ("generate", str(sd1_path), "x", "-o", str(tmp_path / "x.jpg")),
        ("inspect", str(tmp_path)),
    ]
    for args in cases:
        proc = run(*args)
        assert proc.returncode == 2, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("inferkit: error: "), proc.stderr
        assert "Traceback" not in proc.stderr


def test_inspect_reports_the_model(tiny_paths: dict[str, Path]) -> None:
    """`inferkit inspect --json` prints the model's info, evidence and load time included."""
    proc = run("inspect", str(tiny_paths["sd2"]), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["architecture"], info["prediction_type"]) == ("sd2", "v_prediction")
    assert any("sd2" in line for line in info["evidence"])
    assert info["load_timings"]["total"] > 0
    text = run("inspect", str(tiny_paths["sd2"]))
    assert "architecture sd2" in text.stdout
    assert "load time" in text.stdout


def test_schedulers_lists_every_sampler() -> None:
    """`inferkit schedulers` lists every registered sampler with its schedules."""
    proc = run("schedulers", "--json")
    assert proc.returncode == 0
    listed = {row["name"]: row for row in json.loads(proc.stdout)}
    assert {s.name for s in inferkit.samplers() if not s.name.startswith("test")} <= set(listed)
    assert "karras" in listed["dpmpp_2m"]["schedules"]
    table = run("schedulers").stdout
    assert "DPM++ 2M SDE" in table


def test_generate_blends_a_variation_seed_and_writes_a_sheet(
    sd1_path: Path, tmp_path: Path
) -> None:
    """--variation-seed/--variation-strength reach the images' metadata and --grid writes a
    contact sheet of them."""
    out, sheet = tmp_path / "v.png", tmp_path / "sheet.png"
    proc = run(
        "generate", str(sd1_path), "a cat", "--steps", "2", "--seed", "3", "--images", "2",
        "--variation-seed", "8", "--variation-strength", "0.4", "--grid", str(sheet),
        "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = inferkit.read_metadata(tmp_path / "v-1.png")
    assert (meta.seed, meta.variation_seed, meta.variation_strength) == (4, 9, 0.4)
    from PIL import Image

    with Image.open(sheet) as img:
        assert img.size == (128, 64)


@pytest.fixture(scope="module")
def red_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    red = tmp_path_factory.mktemp("cli-red") / "red.png"
    assert run(
        "generate", "inferkit:shapes", "a red circle on a white background", "--steps", "20",
        "--seed", "3", "-o", str(red),
    ).returncode == 0  # fmt: skip
    return red


def test_generate_starts_from_an_init_image(tmp_path: Path, red_png: Path) -> None:
    """--init-image and --strength run image-to-image with the packaged model: a red circle
    asked to be blue comes back blue."""
    from PIL import Image

    from inferkit.zoo.shapes.checker import judge

    out = tmp_path / "blue.png"
    proc = run(
        "generate", "inferkit:shapes", "a blue circle on a white background", "--steps", "20",
        "--seed", "3", "--init-image", str(red_png), "--strength", "0.8", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        seen = judge(img)
    assert (seen.color, seen.shape) == ("blue", "circle")
    assert inferkit.read_metadata(out).record["params"]["denoising_steps"] == 16  # type: ignore[index]


def test_generate_inpaints_with_a_mask(tmp_path: Path, red_png: Path) -> None:
    """--mask repaints the white area only: the circle turns blue, the far corner stays as it
    was, and the mask blur is recorded."""
    import numpy as np
    from PIL import Image

    from inferkit.zoo.shapes.checker import judge

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 16, 48, 56))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "inpainted.png"
    proc = run(
        "generate", "inferkit:shapes", "a blue circle on a white background", "--steps", "20",
        "--seed", "3", "--init-image", str(red_png), "--mask", str(tmp_path / "mask.png"),
        "--mask-blur", "2", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img, Image.open(red_png) as red:
        assert judge(img).color == "blue"
        assert np.array_equal(np.asarray(img)[:8, 56:], np.asarray(red)[:8, 56:])
    assert inferkit.read_metadata(out).record["params"]["mask_blur"] == 2  # type: ignore[index]


def test_generate_applies_loras_with_scales(tmp_path: Path) -> None:
    """--lora PATH:SCALE (repeatable) gives the pixels of with_lora in Python and records the
    adapter; a LoRA for another family fails with the LoraError message and exit code 2."""
    import numpy as np
    from PIL import Image

    shapes = inferkit.Model.load("inferkit:shapes", device="cpu")
    lora = inferkit.testing.write_lora(tmp_path, shapes, "kohya", seed=4)
    out = tmp_path / "styled.png"
    proc = run(
        "generate", "inferkit:shapes", "a red circle on a white background", "--steps", "6",
        "--seed", "3", "--lora", f"{lora}:0.5", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    want = shapes.with_lora(lora, 0.5).infer(
        "a red circle on a white background", steps=6, seed=3, progress=False
    )
    with Image.open(out) as img:
        assert np.array_equal(np.asarray(img), np.asarray(want.images[0].image))
    record = inferkit.read_metadata(out).record
    assert record is not None and record["params"]["loras"][0]["scale"] == 0.5
    foreign = inferkit.testing.write_lora(
        tmp_path / "sdxl", inferkit.Model.load(inferkit.testing.tiny_model_path("sdxl")), "peft"
    )
    bad = run("generate", "inferkit:shapes", "x", "--steps", "1", "--lora", str(foreign))
    assert bad.returncode == 2
    assert "another model family" in bad.stderr and "Traceback" not in bad.stderr


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=20).filter(lambda p: p.strip() == p and p[-1] != ":"),
    st.one_of(st.none(), st.floats(-4, 4, allow_nan=False)),
)
def test_lora_arguments_split_path_and_scale(path: str, scale: float | None) -> None:
    """PATH:SCALE splits at the last colon only when a number follows it; otherwise the whole
    text is the path (Windows drive letters and colons in names survive) at scale 1."""
    from inferkit.cli import _lora

    text = path if scale is None else f"{path}:{scale!r}"
    got_path, got_scale = _lora(text)
    if scale is not None:
        assert (got_path, got_scale) == (path, scale)
    else:
        try:
            float(path.rpartition(":")[2])
            numeric_tail = ":" in path
        except ValueError:
            numeric_tail = False
        if not numeric_tail:
            assert (got_path, got_scale) == (path, 1.0)


def test_generate_reads_long_and_weighted_prompts(tmp_path: Path) -> None:
    """A prompt of 82 tokens, its caption after token 75 and weighted, reaches the model
    through the CLI: the image is blue on black, and the record counts the tokens."""
    from PIL import Image

    from inferkit.zoo.shapes.checker import judge

    out = tmp_path / "long.png"
    prompt = ". " * 75 + "a (blue:1.1) square on a black background"
    proc = run(
        "generate", "inferkit:shapes", prompt, "--steps", "20", "--seed", "1", "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        seen = judge(img)
    assert (seen.color, seen.background) == ("blue", "black")
    record = inferkit.read_metadata(out).record
    assert record is not None
    assert record["params"]["prompt_tokens"] == 82
    assert record["params"]["prompt_weighting"] is True

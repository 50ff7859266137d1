"""PNG metadata: AUTOMATIC1111 infotext and inferkit's JSON record, written and read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import inferkit
from inferkit.metadata import format_infotext, parse_infotext

# Written by AUTOMATIC1111 1.10 (Schedule type on its own, quoted values, extra keys).
A1111_INFOTEXT = (
    "masterpiece, a lighthouse at dusk, (dramatic lighting:1.2)\n"
    "over the sea\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3538906414, "
    "Size: 768x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Lora hashes: "detail: 1a2b3c4d5e, style: 0f9e8d7c6b", Version: v1.10.1'
)


def test_saved_png_round_trips_the_full_record(sd1: inferkit.Model, tmp_path: Path) -> None:
    """save() writes both chunks; read_metadata() gives back prompt, seed, sampler, model hash."""
    result = sd1.infer(
        "a red circle, on white",
        negative_prompt="blurry",
        steps=3,
        seed=77,
        images=2,
        scheduler="DPM++ 2M Karras",
        guidance=6.0,
        progress=False,
    )
    path = result.images[1].save(tmp_path / "out.png")
    meta = inferkit.read_metadata(path)
    assert (meta.prompt, meta.negative_prompt, meta.seed, meta.steps) == (
        "a red circle, on white",
        "blurry",
        78,
        3,
    )
    assert meta.sampler == "dpmpp_2m_karras"
    assert meta.model_hash == result.model.hash
    assert meta.record is not None and meta.record["params"]["guidance"] == 6.0
    assert meta.record["params"]["seeds"] == [77, 78]


def test_saved_png_carries_a1111_infotext(sd1: inferkit.Model, tmp_path: Path) -> None:
    """The parameters chunk is A1111 infotext that A1111's own parser layout understands."""
    result = sd1.infer("a cat", steps=3, seed=5, scheduler="DPM++ 2M Karras", progress=False)
    path = result.images[0].save(tmp_path / "x.png")
    with Image.open(path) as img:
        text = img.info["parameters"]
    meta = parse_infotext(text)
    assert meta.sampler == "DPM++ 2M Karras"
    assert "Schedule type: Karras" in text and "Seed: 5" in text
    assert (meta.width, meta.height, meta.guidance) == (64, 64, 7.0)
    assert meta.extra["Version"].startswith("inferkit")


def test_reads_an_automatic1111_png(tmp_path: Path) -> None:
    """An image written the way AUTOMATIC1111 writes it is read correctly."""
    info = PngInfo()
    info.add_text("parameters", A1111_INFOTEXT)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    meta = inferkit.read_metadata(path)
    assert meta.prompt == "masterpiece, a lighthouse at dusk, (dramatic lighting:1.2)\nover the sea"
    assert meta.negative_prompt == "blurry, lowres"
    assert (meta.steps, meta.seed, meta.guidance) == (25, 3538906414, 6.5)
    assert meta.sampler == "DPM++ 2M Karras"
    assert (meta.width, meta.height) == (768, 512)
    assert (meta.model_hash, meta.model_name) == ("6ce0161689", "v1-5-pruned-emaonly")
    assert meta.extra["Lora hashes"] == "detail: 1a2b3c4d5e, style: 0f9e8d7c6b"
    assert meta.record is None
    assert inferkit.resolve_scheduler(meta.sampler).name == "dpmpp_2m_karras"


def test_old_a1111_sampler_names_with_schedule_inside_parse() -> None:
    """Before 1.9, A1111 wrote 'Sampler: DPM++ 2M Karras' with no Schedule type."""
    meta = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, Seed: 1")
    assert meta.sampler == "DPM++ 2M Karras" and meta.negative_prompt == ""


def test_image_without_metadata_is_refused(tmp_path: Path) -> None:
    """A PNG with no generation chunks raises UnsupportedModelError naming the file."""
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(inferkit.UnsupportedModelError, match=r"plain\.png"):
        inferkit.read_metadata(path)


def test_missing_and_non_image_files_are_refused(tmp_path: Path) -> None:
    """A missing path is FileNotFoundError; a non-image is UnsupportedModelError."""
    with pytest.raises(FileNotFoundError):
        inferkit.read_metadata(tmp_path / "none.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(inferkit.UnsupportedModelError):
        inferkit.read_metadata(junk)


def test_save_requires_a_png_path(sd1: inferkit.Model, tmp_path: Path) -> None:
    """Metadata lives in PNG chunks, so save() refuses other suffixes with the alternative."""
    image = sd1.infer("a cat", steps=1, seed=1, progress=False).images[0]
    with pytest.raises(inferkit.InvalidParameterError, match=r"\.png"):
        image.save(tmp_path / "x.jpg")


prompt_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
).filter(lambda s: s.strip() == s and not s.startswith("Negative prompt:") and "Steps:" not in s)


@given(
    prompt=prompt_text,
    negative=st.one_of(st.just(""), prompt_text),
    steps=st.integers(1, 500),
    seed=st.integers(0, 2**64 - 1),
    cfg=st.floats(0, 30, allow_nan=False).map(lambda x: round(x, 2)),
    model=prompt_text,
)
def test_infotext_round_trips(
    prompt: str, negative: str, steps: int, seed: int, cfg: float, model: str
) -> None:
    """format_infotext and parse_infotext are inverse for any prompt and model name."""
    text = format_infotext(
        prompt=prompt,
        negative_prompt=negative,
        fields={
            "Steps": steps,
            "Sampler": "Euler a",
            "CFG scale": cfg,
            "Seed": seed,
            "Model": model,
        },
    )
    meta = parse_infotext(text)
    assert (meta.prompt, meta.negative_prompt) == (prompt, negative)
    assert (meta.steps, meta.seed, meta.guidance, meta.model_name) == (steps, seed, cfg, model)


@given(st.text(max_size=200))
def test_parser_never_crashes(text: str) -> None:
    """Any text parses to an ImageMetadata (possibly with nothing but a prompt)."""
    assert isinstance(parse_infotext(text), inferkit.ImageMetadata)

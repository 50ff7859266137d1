"""AUTOMATIC1111 prompt weighting: the parser's grammar, chunking, and its effect on encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit.prompt_weights import BREAK, has_weights, parse_weights
from inferkit.prompts import chunks, encode_long

SPECIAL = "()[]\\:"
plain = st.text(
    alphabet=st.characters(blacklist_characters=SPECIAL, blacklist_categories=("Cs",)),
    max_size=30,
).filter(lambda t: "BREAK" not in t)


def escape(text: str) -> str:
    return "".join("\\" + c if c in "()[]\\" else c for c in text)


@settings(max_examples=200, deadline=None)
@given(plain)
def test_text_without_syntax_is_one_fragment_of_weight_one(text: str) -> None:
    """Plain text parses to itself at weight 1 and takes diffusers' own encoding path."""
    assert parse_weights(text) == [(text, 1.0)]
    assert not has_weights(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30).filter(lambda t: "BREAK" not in t))
def test_escaped_text_parses_back_to_itself(text: str) -> None:
    """Backslash-escaping brackets and backslashes gives the literal text, all at weight 1."""
    fragments = parse_weights(escape(text))
    assert "".join(f for f, _ in fragments) == text
    assert {w for _, w in fragments} == {1.0}


@settings(max_examples=200, deadline=None)
@given(plain.filter(bool), st.floats(0, 3, allow_nan=False).map(lambda w: round(w, 2)))
def test_an_explicit_weight_applies_to_its_group(text: str, weight: float) -> None:
    """(text:w) gives text the weight w, whatever the text; the rest keeps weight 1."""
    got = parse_weights(f"a ({text}:{weight}) b")
    if weight == 1.0:
        assert got == [(f"a {text} b", 1.0)]
    else:
        assert got == [("a ", 1.0), (text, weight), (" b", 1.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_to_finite_weights(text: str) -> None:
    """The parser accepts every string (unbalanced brackets included) and gives finite,
    non-negative-or-break weights; dropping the syntax never adds text."""
    fragments = parse_weights(text)
    assert fragments
    for fragment, weight in fragments:
        assert math.isfinite(weight)
        assert weight >= 0 or (fragment, weight) == (BREAK, -1.0) or "-" in text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("(red)", [("red", 1.1)]),
        ("((red))", [("red", 1.21)]),
        ("[red]", [("red", 0.9091)]),
        ("(red:1.5) circle", [("red", 1.5), (" circle", 1.0)]),
        ("((red:2) circle)", [("red", 2.2), (" circle", 1.1)]),
        ("(open", [("open", 1.1)]),
        ("close)", [("close)", 1.0)]),
        ("(x:1.2.3)", [("x:1.2.3)", 1.1)]),
        ("a BREAK b", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
        ("a BREAKS", [("a BREAKS", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_the_grammar_matches_automatic1111(text: str, want: list[tuple[str, float]]) -> None:
    """Groups multiply (1.1 per round bracket, 1/1.1 per square one), nest, stay open to the
    end, and BREAK is a word of its own."""
    assert parse_weights(text) == want


def test_break_starts_a_new_chunk(sd1: inferkit.Model) -> None:
    """Text after BREAK goes into its own 75-token window, with the weights of its tokens."""
    tok = sd1.pipeline.tokenizer
    parts = chunks(tok, "red BREAK (circle:1.5)", weighting=True)
    assert [len(ids) for ids, _ in parts] == [1, 1]
    assert parts[1][1] == [1.5]
    assert len(chunks(tok, "red BREAK circle", weighting=False)) == 1


def test_weights_scale_token_embeddings_and_keep_the_mean() -> None:
    """A weighted token's embedding is multiplied by its weight, then the whole chunk is scaled
    back to its unweighted mean, as AUTOMATIC1111 does (start and padding tokens weigh 1)."""
    from inferkit.prompts import _weighted

    z = torch.randn(1, 77, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    out = _weighted(z, [1.0, 2.0, 0.5])
    scale = torch.ones(77)
    scale[1:4] = torch.tensor([1.0, 2.0, 0.5])
    want = z * scale[None, :, None]
    torch.testing.assert_close(out, want * (z.mean() / want.mean()))
    assert float(out.mean()) == pytest.approx(float(z.mean()), rel=1e-5)
    assert _weighted(z, [1.0, 1.0]) is z


def test_the_model_path_weights_the_named_token() -> None:
    """Through encode_long on the shapes model: weight 1 is diffusers' own encoding exactly,
    and (red:2) doubles the embedding of "red" (this encoder's mean is ~0, so no rescale)."""
    pipe = inferkit.Model.load("inferkit:shapes", device="cpu", dtype="float32").pipeline
    cpu = torch.device("cpu")
    with torch.inference_mode():
        base = encode_long(pipe, "sd1", "a red circle", "", cpu, False, weighting=True)
        same = encode_long(pipe, "sd1", "a (red:1.0) circle", "", cpu, False, weighting=True)
        heavy = encode_long(pipe, "sd1", "a (red:2) circle", "", cpu, False, weighting=True)
        plain, _ = pipe.encode_prompt("a red circle", cpu, 1, False)
    z, w = base["prompt_embeds"], heavy["prompt_embeds"]
    torch.testing.assert_close(same["prompt_embeds"], z)
    torch.testing.assert_close(z, plain)
    torch.testing.assert_close(w[0, 2], 2 * z[0, 2])  # start token, "a", then "red"
    torch.testing.assert_close(w[0, 3:], z[0, 3:])


def test_a_zero_mean_embedding_is_weighted_without_rescaling(sd1: inferkit.Model) -> None:
    """Random tiny encoders give embeddings of mean ~0, which no scale restores: the weights
    still apply and nothing becomes NaN, infinite or zero."""
    with torch.inference_mode():
        out = encode_long(
            sd1.pipeline, "sd1", "the (red:2) circle", "", torch.device("cpu"), False, True
        )["prompt_embeds"]
    assert torch.isfinite(out).all() and out.abs().mean() > 0.1


def test_weighting_changes_the_image_and_can_be_turned_off() -> None:
    """On the shapes model, weighting the colour down to 0 loses it; prompt_weighting=False
    reads the brackets as plain text, and is recorded."""
    from inferkit.zoo.shapes.checker import judge

    model = inferkit.Model.load("inferkit:shapes", device="cpu")
    args = {"steps": 20, "seed": 3, "progress": False}
    plain = model.infer("a red circle on a white background", **args)
    weighted = model.infer("a (red:1.4) circle on a white background", **args)
    literal = model.infer(
        "a (red:1.4) circle on a white background", prompt_weighting=False, **args
    )
    assert judge(weighted.images[0].image).color == "red"
    diff = np.abs(
        np.asarray(weighted.images[0].image, dtype=np.int16)
        - np.asarray(plain.images[0].image, dtype=np.int16)
    )
    assert diff.mean() > 1
    assert weighted.params.prompt_weighting and not literal.params.prompt_weighting
    assert weighted.params.prompt_tokens == plain.params.prompt_tokens
    assert literal.params.prompt_tokens > plain.params.prompt_tokens


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("a red circle <lora:style:0.8>", "with_lora"),
        ("a [red:blue:0.5] circle", "prompt editing"),
        ("a [red|blue] circle", "prompt editing"),
        ("a [blue:10] circle", "prompt editing"),
    ],
)
def test_automatic1111_syntax_inferkit_does_not_read_is_pointed_out(
    sd1: inferkit.Model, prompt: str, says: str
) -> None:
    """LoRA tags and prompt editing pasted from AUTOMATIC1111 run as text, with a warning that
    says what inferkit does instead; plain weighting gets no warning."""
    result = sd1.infer(prompt, steps=1, seed=0, progress=False)
    assert any(says in w for w in result.warnings), result.warnings
    plain = sd1.infer("a [red] (circle:1.2)", steps=1, seed=0, progress=False)
    assert not any("prompt editing" in w or "with_lora" in w for w in plain.warnings)


def test_full_windows_end_after_a_late_comma(sd1: inferkit.Model) -> None:
    """A window that fills up ends after its last comma when that comma is among the last 20
    tokens, so the phrase after it starts the next window whole (AUTOMATIC1111's rule)."""
    tok = sd1.pipeline.tokenizer
    phrase = "the red circle,"  # 4 tokens with the comma
    parts = chunks(tok, phrase * 20)
    comma = tok(",", add_special_tokens=False).input_ids[0]
    assert [len(ids) for ids, _ in parts] == [72, 8]
    assert parts[0][0][-1] == comma
    spaced = chunks(tok, "red " * 40 + "," + " red" * 60)  # comma 35 tokens from the end
    assert [len(ids) for ids, _ in spaced] == [75, 26]

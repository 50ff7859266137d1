"""Fuzzing: mutated checkpoints give a documented inferkit error or load; nothing else escapes.

The default run is bounded for CI (``INFERKIT_FUZZ_EXAMPLES``, 200 examples, well under a
minute). A longer run:

    INFERKIT_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inferkit
import inferkit.testing

EXAMPLES = int(os.environ.get("INFERKIT_FUZZ_EXAMPLES", "200"))
DOCUMENTED = (inferkit.UnsupportedModelError, inferkit.ModelNotFoundError)


class _Original:
    """The valid checkpoint's bytes, with a short repr for Hypothesis' failure reports."""

    def __init__(self, data: bytes, tokenizer: Path) -> None:
        self.data = data
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return f"<tiny sd1 checkpoint, {len(self.data)} bytes>"


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> _Original:
    src = inferkit.testing.tiny_model_path("sd1")
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    inferkit.testing.write_single_file(src, path)
    return _Original(path.read_bytes(), src / "tokenizer")


def _header_size(data: bytes) -> int:
    return 8 + int(struct.unpack("<Q", data[:8])[0])


_mutation = st.one_of(
    st.tuples(st.just("flip_header"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("flip_any"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**9), st.integers(0, 255)),
    st.tuples(st.just("digit"), st.integers(0, 10**9), st.integers(0, 9)),
    st.tuples(st.just("append"), st.integers(1, 64), st.integers(0, 255)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        if not out:
            break
        header = min(_header_size(bytes(out)) if len(out) >= 8 else len(out), len(out))
        if kind == "flip_header" and header > 8:
            at = 8 + where % (header - 8)
            out[at] ^= value
        elif kind == "flip_any":
            out[where % len(out)] ^= value
        elif kind == "truncate":
            del out[where % len(out) :]
        elif kind == "length":
            out[:8] = struct.pack("<Q", where)
        elif kind == "insert":
            out.insert(where % len(out), value)
        elif kind == "digit" and header > 8:
            digits = [i for i in range(8, header) if chr(out[i]).isdigit()]
            if digits:
                out[digits[where % len(digits)]] = ord(str(value))
        elif kind == "append":
            out.extend(bytes([value]) * where)
    return bytes(out)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_mutated_checkpoints_raise_only_documented_errors(
    original: _Original, tmp_path: Path, mutations: list[tuple[str, int, int]]
) -> None:
    """Inspecting and loading a mutated checkpoint either works or raises one of inferkit's
    documented file errors; never a raw KeyError, struct.error, torch error, crash or hang."""
    data, tokenizer = original.data, original.tokenizer
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(_mutate(data, mutations))
    try:
        inferkit.inspect_file(path)
    except DOCUMENTED:
        return
    with contextlib.suppress(*DOCUMENTED):
        inferkit.Model.load(path, tokenizer=tokenizer).close()

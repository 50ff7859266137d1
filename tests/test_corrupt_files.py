"""The corrupt-file catalogue: each damaged or disguised checkpoint gets a specific
UnsupportedModelError (never a crash, a hang or a raw library error), from both inspect_file
and Model.load."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest

import inferkit
from inferkit.safetensors_io import ENTRY_LIMIT, HEADER_LIMIT


def _raw(header: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _t(dtype: str, shape: list[Any], start: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


CATALOGUE: list[tuple[str, bytes, str]] = [
    ("empty", b"", "the file is empty"),
    ("shorter than the length prefix", b"\x01\x02\x03", "shorter than a header"),
    ("header length past the end", _raw(b"{}", length=1000), "runs past the end of the file"),
    ("header length over the cap", _raw(b"{}", length=HEADER_LIMIT + 1), "byte cap"),
    ("malformed JSON", _raw(b'{"a": '), "not valid JSON"),
    ("JSON that is not an object", _raw([1, 2]), "not a JSON object"),
    ("unknown dtype", _raw({"w": _t("F7", [1], 0, 4)}, b"\0" * 4), "unknown dtype 'F7'"),
    ("negative shape", _raw({"w": _t("F32", [-1], 0, 4)}, b"\0" * 4), "invalid shape"),
    ("overflowing shape", _raw({"w": _t("F32", [2**63], 0, 4)}, b"\0" * 4), "invalid shape"),
    ("non-integer shape", _raw({"w": _t("F32", [1.5], 0, 4)}, b"\0" * 4), "invalid shape"),
    (
        "shape product overflowing the data",
        _raw({"w": _t("F32", [2**39, 2**39], 0, 4)}, b"\0" * 4),
        "needs",
    ),
    ("offsets past the end", _raw({"w": _t("F32", [2], 0, 8)}, b"\0" * 4), "past the end"),
    ("offsets out of order", _raw({"w": _t("F32", [1], 8, 4)}, b"\0" * 8), "invalid data_offsets"),
    (
        "overlapping tensors",
        _raw({"a": _t("F32", [2], 0, 8), "b": _t("F32", [1], 4, 8)}, b"\0" * 8),
        "overlap",
    ),
    (
        "a hole between tensors",
        _raw({"a": _t("F32", [1], 0, 4), "b": _t("F32", [1], 8, 12)}, b"\0" * 12),
        "leave a gap",
    ),
    ("size not matching shape", _raw({"w": _t("F32", [3], 0, 8)}, b"\0" * 8), "needs 12 bytes"),
    ("truncated data", _raw({"w": _t("F32", [4], 0, 16)}, b"\0" * 9), "truncated download"),
    ("trailing bytes", _raw({"w": _t("F32", [1], 0, 4)}, b"\0" * 9), "trailing bytes"),
    (
        "duplicate tensor names",
        _raw(
            b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            b"\0" * 4,
        ),
        "appears twice",
    ),
    ("NUL byte in a name", _raw({"w\u0000x": _t("F32", [1], 0, 4)}, b"\0" * 4), "NUL byte"),
    ("extra fields", _raw({"w": {**_t("F32", [1], 0, 4), "x": 1}}, b"\0" * 4), "exactly dtype"),
    ("metadata not strings", _raw({"__metadata__": {"a": 1}}), "must map names to strings"),
    (
        "too many tensors",
        _raw({f"t{i}": _t("F32", [0], 0, 0) for i in range(ENTRY_LIMIT + 1)}),
        f"more than the {ENTRY_LIMIT} accepted",
    ),
    (
        "a Git LFS pointer",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 2132634126\n",
        "this is a Git LFS pointer, not weights",
    ),
    (
        "an HTML page",
        b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>",
        "this is an HTML page saved under a model name, not weights",
    ),
    ("a pickle", pickle.dumps({"state_dict": {}}, protocol=2), "this is a Python pickle"),
    ("random bytes", bytes((i * 7919 + 13) % 256 for i in range(4096)), "not a valid safetensors"),
]


@pytest.mark.parametrize(("case", "content", "phrase"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_damaged_file_gets_a_specific_error(
    tmp_path: Path, case: str, content: bytes, phrase: str
) -> None:
    """Each damaged file names itself and what is wrong, from inspect_file and Model.load."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    for entry in (inferkit.inspect_file, inferkit.Model.load):
        with pytest.raises(inferkit.UnsupportedModelError) as caught:
            entry(path)
        assert phrase in str(caught.value), (case, str(caught.value))
        assert str(path) in str(caught.value)


def test_a_zip_archive_says_so(tmp_path: Path) -> None:
    """A zip (the container of PyTorch's newer pickles) renamed to .safetensors says what it is."""
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(inferkit.UnsupportedModelError, match="zip archive"):
        inferkit.inspect_file(path)


def test_a_directory_where_a_file_belongs(tmp_path: Path) -> None:
    """A folder named like a checkpoint is not read as one."""
    path = tmp_path / "model.safetensors"
    path.mkdir()
    with pytest.raises(inferkit.UnsupportedModelError, match="it is a directory, not a file"):
        inferkit.inspect_file(path)


def test_a_renamed_unet_tensor_is_a_typed_error_from_inspect(tmp_path: Path) -> None:
    """Found by the fuzzer: a header byte flip that renames a UNet tensor made inspect_file
    raise a raw KeyError; it is an UnsupportedModelError like the same file in Model.load."""
    import inferkit.testing

    src = inferkit.testing.tiny_model_path("sd1")
    path = inferkit.testing.write_single_file(src, tmp_path / "m.safetensors")
    data = path.read_bytes()
    old = b"model.diffusion_model.out.2.weight"
    path.write_bytes(data.replace(old, b"model.diffusion_model.out.2.weighu", 1))
    with pytest.raises(inferkit.UnsupportedModelError, match="unexpected checkpoint layout"):
        inferkit.inspect_file(path)

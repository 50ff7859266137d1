"""Batch generation without Ray: rows, prompt files, one-row records, and the resumable loop."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import inferkit
from inferkit._batch_cli import add_batch_command, run_batch
from inferkit.batch import (
    COLUMNS,
    MANIFEST_COLUMNS,
    BatchRow,
    derive_seed,
    generate_row,
    parse_row,
    read_manifest,
    read_prompts,
    run_local,
)

pa = pytest.importorskip("pyarrow")
fsspec = pytest.importorskip("fsspec")

SHAPES = [
    "a red circle on a white background",
    "a blue square on a white background",
    "a green triangle on a white background",
]


@pytest.fixture(scope="module")
def shapes() -> Iterator[inferkit.Model]:
    with inferkit.Model.load("inferkit:shapes", device="cpu") as model:
        yield model


def _pixels(data: bytes | Path) -> bytes:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
        return image.convert("RGB").tobytes()


# --- rows ----------------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
_valid_rows = st.fixed_dictionaries(
    {"prompt": _text},
    optional={
        "negative_prompt": _text,
        "seed": st.integers(0, 2**64 - 1),
        "steps": st.integers(1, 200),
        "guidance": st.floats(0, 30, allow_nan=False).map(lambda g: round(g, 3)),
        "width": st.sampled_from([64, 512, 768]),
        "height": st.sampled_from([64, 512, 768]),
        "scheduler": st.sampled_from(["euler", "Euler a", "DPM++ 2M Karras"]),
        "id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    },
)


def test_a_row_needs_only_a_prompt_and_gets_a_seed_derived_from_its_id() -> None:
    """Without a seed, the seed comes from the id, so parsing the row again gives the same one."""
    first = parse_row({"prompt": "a red circle"})
    again = parse_row({"prompt": "a red circle"})
    assert first == again
    assert first.seed == derive_seed(first.id)
    assert 0 <= first.seed < 2**32
    assert (first.steps, first.guidance, first.scheduler) == (None, None, None)


@given(_valid_rows)
def test_csv_text_and_typed_values_parse_to_the_same_row(row: dict[str, Any]) -> None:
    """A row read from CSV (every value text) has the same id, seed and values as typed."""
    as_text = {k: v if isinstance(v, str) else repr(v) for k, v in row.items()}
    assert parse_row(as_text) == parse_row(row)


@given(st.lists(_valid_rows, min_size=1, max_size=5))
def test_rows_written_to_a_csv_file_read_back_to_the_same_rows(rows: list[dict[str, Any]]) -> None:
    """Any prompt text (commas, quotes, newlines, unicode) survives a CSV file round trip."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        read = read_prompts(path)
    assert [parse_row(r) for r in read] == [parse_row(r) for r in rows]


@given(
    st.dictionaries(
        st.sampled_from([*COLUMNS, "sede", "Prompt"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text, st.lists(_text)),
    )
)
def test_any_mapping_parses_or_raises_invalid_parameter_error(row: dict[str, Any]) -> None:
    """The parser never lets another exception type escape, whatever the values."""
    try:
        parsed = parse_row(row)
    except inferkit.InvalidParameterError:
        return
    assert isinstance(parsed, BatchRow)


def test_a_given_id_is_kept_and_must_be_a_safe_file_name() -> None:
    """The id becomes a file name: letters, digits, '.', '_' and '-' only."""
    assert parse_row({"prompt": "x", "id": "cat-01"}).id == "cat-01"
    assert parse_row({"prompt": "x", "id": 7}).id == "7"
    with pytest.raises(inferkit.InvalidParameterError, match="file name"):
        parse_row({"prompt": "x", "id": "../etc/passwd"})


def test_an_unknown_column_is_refused_with_a_suggestion() -> None:
    """A misspelt column names the column and the likely intended one."""
    with pytest.raises(inferkit.InvalidParameterError, match="did you mean 'seed'"):
        parse_row({"prompt": "x", "sede": 3})


def test_defaults_fill_missing_values_and_are_part_of_the_id() -> None:
    """Defaults apply where the row is silent; other defaults make other images, other ids."""
    row = {"prompt": "x", "steps": ""}
    with_20 = parse_row(row, {"steps": 20, "guidance": 5})
    assert (with_20.steps, with_20.guidance) == (20, 5.0)
    assert parse_row({"prompt": "x", "steps": 3}, {"steps": 20}).steps == 3
    assert with_20.id != parse_row(row, {"steps": 21, "guidance": 5}).id


def test_numpy_scalars_and_pandas_missing_values_are_understood() -> None:
    """Rows from Ray or pandas batches: numpy scalars are values, NaN is a missing value."""
    row = parse_row({"prompt": "x", "seed": np.uint64(2**64 - 1), "steps": math.nan})
    assert (row.seed, row.steps) == (2**64 - 1, None)


def test_a_bad_value_is_refused_with_generation_params_message() -> None:
    """Values are checked as GenerationParams checks them, scheduler names included."""
    with pytest.raises(inferkit.UnknownSchedulerError):
        parse_row({"prompt": "x", "scheduler": "eulr"})
    with pytest.raises(inferkit.InvalidParameterError, match="seed"):
        parse_row({"prompt": "x", "seed": 2**64})


# --- prompt files ----------------------------------------------------------------------------


def test_csv_and_jsonl_files_give_the_same_rows(tmp_path: Path) -> None:
    """The two formats are interchangeable; blank lines are skipped."""
    (tmp_path / "p.csv").write_text('prompt,seed,steps\n"a cat, small",3,8\n\nb dog,,\n')
    lines = [{"prompt": "a cat, small", "seed": 3, "steps": 8}, {"prompt": "b dog"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    from_csv = [parse_row(r) for r in read_prompts(tmp_path / "p.csv")]
    assert from_csv == [parse_row(r) for r in read_prompts(tmp_path / "p.jsonl")]
    assert len(from_csv) == 2


def test_a_missing_prompt_file_is_a_file_not_found_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        read_prompts(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".csv", "", "is empty"),
        (".csv", "text,seed\na cat,1\n", "'prompt' column"),
        (".csv", "prompt,sede\na cat,1\n", "line 1.*did you mean 'seed'"),
        (".csv", "prompt,seed\na cat,1\na dog,2,3\n", "line 3 has 3 cells"),
        (".jsonl", '{"prompt": "a cat"}\n{"prompt": \n', "line 2 is not valid JSON"),
        (".jsonl", '["a cat"]\n', "line 1 must be a JSON object"),
        (".jsonl", '{"prompt": "a", "sead": 1}\n', "line 1.*did you mean 'seed'"),
        (".txt", "a cat\n", r"\.csv .* or a \.jsonl"),
    ],
)
def test_a_malformed_prompt_file_is_refused_naming_the_file_and_line(
    tmp_path: Path, suffix: str, content: str, message: str
) -> None:
    """Whole-file mistakes stop the run up front, with the file name and line in the message."""
    path = tmp_path / f"prompts{suffix}"
    path.write_text(content)
    with pytest.raises(inferkit.InvalidParameterError, match=message) as caught:
        read_prompts(path)
    assert str(path) in str(caught.value)


# --- one row ---------------------------------------------------------------------------------


def test_a_row_record_has_the_png_with_inferkits_metadata(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """The PNG bytes carry the same record as GeneratedImage.save; params are ResolvedParams."""
    record = generate_row(sd1, {"prompt": "a cat", "seed": 9, "steps": 2})
    assert record["error"] is None
    assert set(record) == {"id", "prompt", "seed", "png", "params", "model_sha256", "error",
                           "seconds"}  # fmt: skip
    path = tmp_path / "x.png"
    path.write_bytes(record["png"])
    meta = inferkit.read_metadata(path)
    assert (meta.prompt, meta.seed, meta.steps) == ("a cat", 9, 2)
    assert json.loads(record["params"])["seeds"] == [9]
    assert record["model_sha256"] == sd1.info.sha256


def test_a_row_with_a_bad_value_becomes_a_failed_record(sd1: inferkit.Model) -> None:
    """The error type and message are recorded; the row as given is kept in params."""
    record = generate_row(sd1, {"prompt": "a cat", "width": 63, "id": "w"})
    assert record["id"] == "w"
    assert record["png"] is None
    assert record["error"].startswith("InvalidParameterError: width=63")
    assert json.loads(record["params"])["width"] == 63


def test_an_exception_from_the_model_becomes_a_failed_record(
    sd1: inferkit.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception while generating is recorded, not raised."""

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(sd1, "infer", explode)
    record = generate_row(sd1, {"prompt": "a cat", "seed": 1})
    assert record["error"] == "RuntimeError: the GPU caught fire"
    assert (record["seed"], record["png"]) == (1, None)


# --- the local loop --------------------------------------------------------------------------


def test_run_local_makes_the_same_pixels_as_model_infer(
    shapes: inferkit.Model, tmp_path: Path
) -> None:
    """Each row's image equals model.infer's for its prompt and (given or derived) seed."""
    rows = [{"prompt": p, "seed": i} for i, p in enumerate(SHAPES)] + [{"prompt": SHAPES[0]}]
    summary = run_local(shapes, rows, tmp_path, defaults={"steps": 8}, progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    for record in read_manifest(tmp_path).to_pylist():
        direct = shapes.infer(record["prompt"], seed=record["seed"], steps=8, progress=False)
        assert _pixels(tmp_path / record["path"]) == direct.images[0].image.tobytes()
    derived = parse_row(rows[-1], {"steps": 8})
    assert (tmp_path / "images" / f"{derived.id}.png").exists()


def test_the_manifest_has_one_record_per_row_with_relative_paths(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """Columns are MANIFEST_COLUMNS; paths are relative to the output folder."""
    rows = [{"prompt": "a cat", "id": "c"}, {"prompt": "a dog", "steps": 0, "id": "d"}]
    run_local(sd1, rows, tmp_path / "out", defaults={"steps": 2}, progress=False)
    table = read_manifest(tmp_path / "out")
    assert tuple(table.column_names) == MANIFEST_COLUMNS
    assert str(table.schema.field("seed").type) == "uint64"
    records = {r["id"]: r for r in table.to_pylist()}
    assert records["c"]["path"] == "images/c.png"
    assert records["c"]["model_sha256"] == sd1.info.sha256
    assert records["d"]["path"] is None
    assert "steps=0" in records["d"]["error"]
    parts = list((tmp_path / "out" / "manifest").glob("*.parquet"))
    assert len(parts) == 1
    assert pa.parquet.read_table(parts[0]).num_rows == 2


def test_a_rerun_skips_done_rows_without_loading_the_model(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """With everything done, the model source is not even opened (here: it does not exist)."""
    rows = [{"prompt": "a cat"}, {"prompt": "a dog"}]
    run_local(sd1, rows, tmp_path, defaults={"steps": 2}, progress=False)
    again = run_local(
        tmp_path / "no-such-model", rows, tmp_path, defaults={"steps": 2}, progress=False
    )
    assert (again.total, again.done, again.skipped, again.failed) == (2, 0, 2, 0)


def test_a_row_whose_prompt_changed_under_its_id_is_generated_again(
    sd1: inferkit.Model, tmp_path: Path
) -> None:
    """A rerun skips an id only when its prompt and seed are those recorded: an edited prompt
    under the same given id makes a new image and replaces the record."""
    run_local(sd1, [{"prompt": "a cat", "id": "pet"}], tmp_path, defaults={"steps": 2},
              progress=False)  # fmt: skip
    again = run_local(
        sd1, [{"prompt": "a dog", "id": "pet"}], tmp_path, defaults={"steps": 2}, progress=False
    )
    assert (again.done, again.skipped) == (1, 0)
    (record,) = read_manifest(tmp_path).to_pylist()
    assert record["prompt"] == "a dog"
    assert inferkit.read_metadata(tmp_path / "images" / "pet.png").prompt == "a dog"


def test_failed_rows_are_retried_on_the_next_run(
    sd1: inferkit.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that failed is tried again; its new success replaces the failure in the manifest."""
    real = sd1.infer
    calls: list[str] = []

    def flaky(params: inferkit.GenerationParams, **kwargs: Any) -> inferkit.InferenceResult:
        calls.append(params.prompt)
        if params.prompt == "a dog" and calls.count("a dog") == 1:
            raise inferkit.NumericalError(step=1, dtype="float32")
        return real(params, **kwargs)

    monkeypatch.setattr(sd1, "infer", flaky)
    rows = [{"prompt": "a cat", "id": "cat"}, {"prompt": "a dog", "id": "dog"}]
    first = run_local(sd1, rows, tmp_path, defaults={"steps": 2}, progress=False)
    assert (first.done, first.failed, first.failed_ids) == (1, 1, ("dog",))
    second = run_local(sd1, rows, tmp_path, defaults={"steps": 2}, progress=False)
    assert (second.done, second.skipped, second.failed) == (1, 1, 0)
    assert calls == ["a cat", "a dog", "a dog"]
    assert {r["id"]: r["error"] for r in read_manifest(tmp_path).to_pylist()} == {
        "cat": None,
        "dog": None,
    }


def test_a_row_whose_image_was_deleted_is_made_again(sd1: inferkit.Model, tmp_path: Path) -> None:
    rows = [{"prompt": "a cat", "id": "cat"}, {"prompt": "a dog", "id": "dog"}]
    run_local(sd1, rows, tmp_path, defaults={"steps": 2}, progress=False)
    (tmp_path / "images" / "cat.png").unlink()
    again = run_local(sd1, rows, tmp_path, defaults={"steps": 2}, progress=False)
    assert (again.done, again.skipped) == (1, 1)
    assert (tmp_path / "images" / "cat.png").exists()


def test_an_interrupted_run_keeps_the_rows_flushed_before_it(
    sd1: inferkit.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C is not recorded as a failure: it stops the run, and what was flushed stays done."""
    real = sd1.infer
    count = {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> inferkit.InferenceResult:
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sd1, "infer", interrupted)
    rows = [{"prompt": f"prompt {i}", "steps": 2} for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        run_local(sd1, rows, tmp_path, flush_every=1, progress=False)
    monkeypatch.undo()
    assert read_manifest(tmp_path).num_rows == 2
    rest = run_local(sd1, rows, tmp_path, progress=False)
    assert (rest.done, rest.skipped) == (2, 2)


def test_output_can_be_any_fsspec_url(sd1: inferkit.Model) -> None:
    """memory:// stands in for s3:// and friends: images and manifest land there."""
    out = "memory://inferkit-test-batch/run"
    summary = run_local(sd1, [{"prompt": "a cat", "id": "c"}], out, defaults={"steps": 2},
                        progress=False)  # fmt: skip
    fs = fsspec.filesystem("memory")
    assert summary.done == 1
    assert fs.cat("/inferkit-test-batch/run/images/c.png")[:4] == b"\x89PNG"
    assert read_manifest(out).column("id").to_pylist() == ["c"]
    assert run_local(sd1, [{"prompt": "a cat", "id": "c"}], out, defaults={"steps": 2},
                     progress=False).skipped == 1  # fmt: skip


def test_identical_rows_are_generated_once(sd1: inferkit.Model, tmp_path: Path) -> None:
    summary = run_local(sd1, [{"prompt": "a cat", "steps": 2}] * 3, tmp_path, progress=False)
    assert (summary.total, summary.done, summary.skipped) == (3, 1, 2)


def test_two_different_rows_with_one_id_are_refused_before_any_work(tmp_path: Path) -> None:
    rows = [{"prompt": "a cat", "id": "x"}, {"prompt": "a dog", "id": "x"}]
    with pytest.raises(inferkit.InvalidParameterError, match="two different rows"):
        run_local(tmp_path / "no-such-model", rows, tmp_path, progress=False)


def test_without_pyarrow_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    with pytest.raises(inferkit.MissingExtraError, match=r'pip install "inferkit\[batch\]"'):
        run_local("inferkit:shapes", [{"prompt": "a cat"}], tmp_path, progress=False)


# --- the command -----------------------------------------------------------------------------


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="inferkit")
    add_batch_command(parser.add_subparsers(dest="command", required=True))
    return run_batch(parser.parse_args(["batch", *argv]))


def test_the_batch_command_runs_a_csv_locally_and_resumes(
    sd1_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`inferkit batch MODEL prompts.csv --out DIR --backend local` writes images, then skips."""
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt,seed\na,a cat,1\nb,a dog,2\n")
    out = tmp_path / "out"
    args = [str(sd1_path), str(prompts), "--out", str(out), "--backend", "local", "--steps", "2"]
    assert _cli(*args) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "b.png"]
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert _cli(*args, "--quiet") == 0
    assert "0 done, 2 skipped" in capsys.readouterr().out


def test_the_batch_command_exits_1_when_rows_fail(
    sd1_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a cat", "steps": 2}\n{"prompt": "a dog", "steps": -1}\n')
    assert _cli(str(sd1_path), str(prompts), "--out", str(tmp_path), "--backend", "local") == 1
    assert "1 row failed" in capsys.readouterr().err

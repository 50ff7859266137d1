"""Batch generation: many rows of prompts in, PNG files and a Parquet manifest out, resumably.

A *row* is a mapping with a ``prompt`` and, optionally, ``id``, ``seed``, ``negative_prompt``,
``steps``, ``guidance``, ``width``, ``height`` and ``scheduler`` (see :data:`COLUMNS`). Rows come
from Python, from a CSV or JSON Lines file (:func:`read_prompts`), or from a Ray Dataset
(:mod:`inferkit.ray`). Missing or empty values take the model's and :class:`GenerationParams`'
defaults.

Every row has a stable **id**: the ``id`` column when given, otherwise the first 16 hex digits of
the sha256 of the row's normalised content (prompt, seed and parameters). A row **without a seed
gets one derived from its id** (the first 4 bytes of ``sha256("inferkit-seed:" + id)``), so
running the same rows again makes the same images. Rows with the same content therefore have
the same id and are generated once; give rows their own ``seed`` or ``id`` to get several
images of one prompt.

:func:`run_local` is the plain one-machine loop; :func:`inferkit.ray.generate` runs the same rows
on a Ray cluster. Both write ``OUT/images/<id>.png`` (with inferkit's PNG metadata) and a manifest
(:func:`read_manifest`), and both skip rows already done by an earlier run.

Batch output needs ``pyarrow`` and ``fsspec``: ``pip install "inferkit[batch]"`` (or
``"inferkit[ray]"``, which includes them).

Example:
    >>> row = parse_row({"prompt": "a red circle", "seed": "7", "steps": "8"})
    >>> row.id, row.seed, row.steps
    ('38c8c65a56044af3', 7, 8)
    >>> parse_row({"prompt": "a red circle"}).seed  # derived from the id: the same every run
    3637681787

"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from inferkit.errors import (
    DeviceOutOfMemoryError,
    InvalidParameterError,
    MissingExtraError,
    ModelClosedError,
    ModelNotFoundError,
)
from inferkit.params import SEED_LIMIT, GenerationParams

if TYPE_CHECKING:
    import pyarrow as pa

    from inferkit.model import Model

__all__ = [
    "COLUMNS",
    "MANIFEST_COLUMNS",
    "BatchRow",
    "BatchSummary",
    "generate_row",
    "parse_row",
    "read_manifest",
    "read_prompts",
    "run_local",
]

COLUMNS = (
    "id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "scheduler",
)
"""The columns a row may have; only ``prompt`` is required."""

MANIFEST_COLUMNS = ("id", "prompt", "seed", "path", "params", "model_sha256", "error", "seconds")
"""The manifest's columns, in order (see :func:`read_manifest`)."""

OUTPUT_COLUMNS = ("id", "prompt", "seed", "png", "params", "model_sha256", "error", "seconds")
"""The columns of :func:`generate_row`'s records: the manifest's, with PNG bytes for ``path``."""

_DEFAULTABLE = frozenset(COLUMNS) - {"id", "prompt"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TEXT_COLUMNS = frozenset({"prompt", "negative_prompt"})
_FLUSH_SECONDS = 30.0


def _require(module: str, extra: str, feature: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{feature} needs the {module.split('.')[0]!r} package, which is not installed; "
            f'install it with: pip install "inferkit[{extra}]"',
            name=module,
        ) from e


def _pyarrow() -> Any:
    _require("pyarrow.parquet", "batch", "batch generation's Parquet manifest")
    return _require("pyarrow", "batch", "batch generation's Parquet manifest")


def _fsspec() -> Any:
    return _require("fsspec", "batch", "batch generation's output folder")


# --- rows ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BatchRow:
    """One validated row: what to generate, under which stable id, with which seed.

    Build it with :func:`parse_row`. ``None`` fields take the model's or
    :class:`GenerationParams`' defaults.

    Attributes:
        id: stable id; also the image's file name (``images/<id>.png``).
        prompt: the prompt.
        negative_prompt: the negative prompt ("" for none).
        seed: the seed, as given or derived from the id.
        steps: sampler steps, or ``None``.
        guidance: guidance scale, or ``None``.
        width: width in pixels, or ``None`` for the model's native size.
        height: height in pixels, or ``None``.
        scheduler: sampler name, or ``None`` for the model's.

    Example:
        >>> row = parse_row({"prompt": "a blue square", "seed": 3, "guidance": 5})
        >>> row.params().guidance, row.params().seed
        (5.0, 3)

    """

    id: str
    prompt: str
    negative_prompt: str = ""
    seed: int
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None

    def params(self) -> GenerationParams:
        """Return the :class:`GenerationParams` of this row."""
        given: dict[str, Any] = {
            k: v
            for k, v in {
                "steps": self.steps,
                "guidance": self.guidance,
                "width": self.width,
                "height": self.height,
                "scheduler": self.scheduler,
            }.items()
            if v is not None
        }
        return GenerationParams(
            self.prompt, negative_prompt=self.negative_prompt, seed=self.seed, **given
        )

    def as_row(self) -> dict[str, Any]:
        """Return the row as a plain mapping that :func:`parse_row` reads back to this row."""
        return attrs.asdict(self)


def _unwrap(value: Any) -> Any:
    """Turn numpy and pandas scalars into Python ones; NaN (pandas' missing value) into None."""
    if value is not None and not isinstance(value, (str, bytes, int, float)):
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "shape", None) == ():
            value = item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _is_missing(name: str, value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, str) and name not in _TEXT_COLUMNS and not value.strip()


def _int(name: str, value: Any, allowed: str) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError(name, value, allowed)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidParameterError(name, value, allowed)


def _float(name: str, value: Any) -> float:
    allowed = "must be a finite number >= 0"
    if isinstance(value, bool):
        raise InvalidParameterError(name, value, allowed)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise InvalidParameterError(name, value, allowed)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidParameterError(name, value, "must be a string")
    return value


def _unknown_column(names: Iterable[Any]) -> tuple[Any, str] | None:
    """Return the first name that is not a column and what to say about it, or ``None``."""
    for name in names:
        if name not in COLUMNS:
            close = difflib.get_close_matches(str(name), COLUMNS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return name, f"{hint}the columns are {', '.join(COLUMNS)}"
    return None


def _check_columns(names: Iterable[Any], where: str) -> None:
    unknown = _unknown_column(names)
    if unknown is not None:
        raise InvalidParameterError(
            "column", unknown[0], f"is not a batch column{where}; {unknown[1]}"
        )


def _check_file_columns(names: Iterable[Any], file: str, line: int) -> None:
    unknown = _unknown_column(names)
    if unknown is not None:
        raise InvalidParameterError(
            "prompts",
            file,
            f"line {line} has column {unknown[0]!r}, which is not a batch column; {unknown[1]}",
        )


def _content_id(content: Mapping[str, Any]) -> str:
    text = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def derive_seed(row_id: str) -> int:
    """Return the seed of a row that names none: a 32-bit number derived from its id.

    Example:
        >>> derive_seed("cat-1") == derive_seed("cat-1"), 0 <= derive_seed("cat-1") < 2**32
        (True, True)

    """
    digest = hashlib.sha256(f"inferkit-seed:{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def parse_row(row: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> BatchRow:
    """Validate one row and give it its id and seed.

    Values may be typed (``7``, ``7.5``) or text as read from CSV (``"7"``); empty text and
    ``None`` mean "missing", so the default applies. ``defaults`` fills columns the row leaves
    missing (for example ``{"steps": 20}``) and is part of the id.

    Raises:
        InvalidParameterError: an unknown column, a missing prompt, or a value that is not
            allowed (the message names the column).

    Example:
        >>> parse_row({"prompt": "a cat", "steps": "0"})
        Traceback (most recent call last):
        ...
        inferkit.errors.InvalidParameterError: steps=0 is not allowed: must be an integer >= 1
        >>> parse_row({"prompt": "a cat", "steps": ""}, {"steps": 12}).steps
        12

    """
    if not isinstance(row, Mapping):
        raise InvalidParameterError("row", row, "must be a mapping of column names to values")
    _check_columns(row, "")
    if defaults:
        _check_columns(defaults, " (in defaults)")
        for name in ("id", "prompt"):
            if name in defaults:
                raise InvalidParameterError(
                    name, defaults[name], "cannot have a default: it is each row's own"
                )
    values = {k: _unwrap(v) for k, v in (defaults or {}).items()}
    for key, raw in row.items():
        value = _unwrap(raw)
        if not _is_missing(key, value):
            values[key] = value
    values = {k: v for k, v in values.items() if not _is_missing(k, v)}
    if "prompt" not in values:
        raise InvalidParameterError("prompt", None, "is required: every row needs a prompt")
    prompt = _text("prompt", values["prompt"])
    negative = _text("negative_prompt", values.get("negative_prompt", ""))
    seed: int | None = None
    if "seed" in values:
        seed = _int("seed", values["seed"], "must be an integer in [0, 2**64)")
        if not 0 <= seed < SEED_LIMIT:
            raise InvalidParameterError("seed", values["seed"], "must be an integer in [0, 2**64)")
    size = "must be a positive multiple of the model's VAE factor (8 for Stable Diffusion)"
    fields: dict[str, Any] = {
        "steps": _int("steps", values["steps"], "must be an integer >= 1")
        if "steps" in values
        else None,
        "guidance": _float("guidance", values["guidance"]) if "guidance" in values else None,
        "width": _int("width", values["width"], size) if "width" in values else None,
        "height": _int("height", values["height"], size) if "height" in values else None,
        "scheduler": _text("scheduler", values["scheduler"]).strip()
        if "scheduler" in values
        else None,
    }
    if "id" in values:
        given = values["id"]
        row_id = str(given) if isinstance(given, int) and not isinstance(given, bool) else given
        if not isinstance(row_id, str) or not _ID.fullmatch(row_id):
            raise InvalidParameterError(
                "id",
                given,
                "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit (it becomes the image's file name)",
            )
    else:
        row_id = _content_id(
            {"prompt": prompt, "negative_prompt": negative, "seed": seed, **fields}
        )
    parsed = BatchRow(
        id=row_id,
        prompt=prompt,
        negative_prompt=negative,
        seed=derive_seed(row_id) if seed is None else seed,
        **fields,
    )
    parsed.params()  # validate ranges and the scheduler name now, with GenerationParams' messages
    return parsed


def fallback_id(row: Any) -> str:
    """Return the id a row that does not parse is recorded under.

    That is its own ``id`` when it is a valid one, else a hash of its content.

    Example:
        >>> fallback_id({"prompt": "x", "steps": "many", "id": "x-1"})
        'x-1'

    """
    if isinstance(row, Mapping):
        given = _unwrap(row.get("id"))
        if isinstance(given, int) and not isinstance(given, bool):
            given = str(given)
        if isinstance(given, str) and _ID.fullmatch(given):
            return given
        return _content_id({str(k): _unwrap(v) for k, v in row.items()})
    return _content_id({"row": row})


# --- reading prompt files -------------------------------------------------------------------


def _open_text(path: str | os.PathLike[str]) -> Any:
    text = os.fspath(path)
    if "://" in text:
        fsspec = _fsspec()
        fs, inner = fsspec.core.url_to_fs(text)
        if not fs.exists(inner):
            raise ModelNotFoundError(f"prompt file {text} does not exist", source=text)
        return fs.open(inner, "r", encoding="utf-8", newline="")
    local = Path(text)
    if not local.is_file():
        raise ModelNotFoundError(
            f"prompt file {text} does not exist (or is not a file)", source=text
        )
    return local.open("r", encoding="utf-8", newline="")


def read_prompts(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    r"""Read rows from a CSV file (with a header row) or a JSON Lines file (one object a line).

    The format follows the suffix: ``.csv``, or ``.jsonl``/``.ndjson``. Local paths and fsspec
    URLs both work. The whole file's shape is checked here, so a typo in a column name stops
    the run before any work; bad *values* are left to each row, which then fails on its own
    and is recorded in the manifest (see :func:`run_local`). Blank lines are skipped.

    Returns:
        The rows, as dicts; CSV values are strings (empty cells are missing values).

    Raises:
        ModelNotFoundError: the file does not exist (a ``FileNotFoundError``).
        InvalidParameterError: the suffix is unknown, the CSV has no header or no ``prompt``
            column, a column is unknown, or a JSON line is not an object; the message names the
            file and line.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prompts.csv"
        >>> _ = path.write_text('prompt,seed\n"a red circle, small",3\n')
        >>> read_prompts(path)
        [{'prompt': 'a red circle, small', 'seed': '3'}]

    """
    text = os.fspath(path)
    suffix = Path(text.split("?")[0]).suffix.lower()
    if suffix == ".csv":
        with _open_text(path) as handle:
            return _read_csv(handle, text)
    if suffix in (".jsonl", ".ndjson"):
        with _open_text(path) as handle:
            return _read_jsonl(handle, text)
    raise InvalidParameterError(
        "prompts", text, "must be a .csv file with a header row or a .jsonl file"
    )


def _read_csv(handle: Any, name: str) -> list[dict[str, Any]]:
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidParameterError(
            "prompts", name, "is empty; it needs a header row such as 'prompt,seed'"
        ) from None
    except csv.Error as e:
        raise InvalidParameterError("prompts", name, f"line 1 is not valid CSV: {e}") from e
    columns = [c.strip() for c in header]
    if "prompt" not in columns:
        raise InvalidParameterError(
            "prompts", name, f"line 1 must be a header row with a 'prompt' column, not {header!r}"
        )
    _check_file_columns(columns, name, 1)
    if len(set(columns)) != len(columns):
        raise InvalidParameterError("prompts", name, "line 1 names a column twice")
    rows: list[dict[str, Any]] = []
    start = reader.line_num
    try:
        for cells in reader:
            line = start + 1
            start = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip() and len(columns) > 1):
                continue
            if len(cells) > len(columns):
                raise InvalidParameterError(
                    "prompts",
                    name,
                    f"line {line} has {len(cells)} cells but the header has {len(columns)} "
                    "columns; quote cells that contain commas",
                )
            rows.append(dict(zip(columns, cells, strict=False)))
    except csv.Error as e:
        raise InvalidParameterError(
            "prompts", name, f"line {reader.line_num} is not valid CSV: {e}"
        ) from e
    return rows


def _read_jsonl(handle: Any, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidParameterError(
                "prompts", name, f"line {number} is not valid JSON: {e.msg}"
            ) from e
        if not isinstance(value, dict):
            raise InvalidParameterError(
                "prompts", name, f'line {number} must be a JSON object such as {{"prompt": "..."}}'
            )
        _check_file_columns(value, name, number)
        rows.append(value)
    return rows


# --- one row ---------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def failed_record(row: Any, error: BaseException, seconds: float = 0.0) -> dict[str, Any]:
    """Return the record of a row that could not be generated (``png`` is ``None``).

    Example:
        >>> failed_record({"prompt": "a cat", "id": "c1"}, ValueError("bad"))["error"]
        'ValueError: bad'

    """
    prompt = _unwrap(row.get("prompt")) if isinstance(row, Mapping) else None
    request = (
        {str(k): _unwrap(v) for k, v in row.items()} if isinstance(row, Mapping) else {"row": row}
    )
    return {
        "id": fallback_id(row),
        "prompt": prompt if isinstance(prompt, str) else None,
        "seed": None,
        "png": None,
        "params": _json(request),
        "model_sha256": None,
        "error": _describe(error),
        "seconds": seconds,
    }


def generate_row(
    model: Model, row: Mapping[str, Any] | BatchRow, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    r"""Generate one row's image and return its record; a failure is recorded, not raised.

    Returns:
        A dict with :data:`OUTPUT_COLUMNS`: ``id``, ``prompt``, ``seed``, ``png`` (PNG bytes
        with inferkit's metadata, or ``None``), ``params`` (JSON of the
        :class:`ResolvedParams`; for a failed row, the row as given), ``model_sha256``,
        ``error`` (``None``, or ``"ErrorType: message"``) and ``seconds``.

    Raises:
        ModelClosedError: the model is closed (every other row would fail too).
        MemoryError: the host ran out of memory (device out-of-memory is recorded instead).

    Any other exception from the row, inferkit's or not, becomes its ``error``.

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> record = generate_row(model, {"prompt": "a cat", "seed": 4, "steps": 2})
        >>> record["seed"], record["error"], record["png"][:4]
        (4, None, b'\x89PNG')
        >>> generate_row(model, {"prompt": "a cat", "steps": -1})["error"]
        'InvalidParameterError: steps=-1 is not allowed: must be an integer >= 1'

    """
    start = time.perf_counter()
    try:
        parsed = row if isinstance(row, BatchRow) else parse_row(row, defaults)
    except InvalidParameterError as e:
        return failed_record(row, e, time.perf_counter() - start)
    try:
        result = model.infer(parsed.params(), progress=False)
        png = result.images[0].png_bytes()
    except (ModelClosedError, KeyboardInterrupt):
        raise
    except MemoryError as e:
        if not isinstance(e, DeviceOutOfMemoryError):
            raise
        return _failed_parsed(parsed, e, model, start)
    except Exception as e:
        return _failed_parsed(parsed, e, model, start)
    return {
        "id": parsed.id,
        "prompt": parsed.prompt,
        "seed": parsed.seed,
        "png": png,
        "params": _json(result.params.as_dict()),
        "model_sha256": result.model.sha256,
        "error": None,
        "seconds": time.perf_counter() - start,
    }


def _failed_parsed(
    row: BatchRow, error: BaseException, model: Model, start: float
) -> dict[str, Any]:
    sha: str | None
    try:
        sha = model.info.sha256
    except Exception:
        sha = None
    return {
        "id": row.id,
        "prompt": row.prompt,
        "seed": row.seed,
        "png": None,
        "params": _json(row.as_row()),
        "model_sha256": sha,
        "error": _describe(error),
        "seconds": time.perf_counter() - start,
    }


# --- planning a run --------------------------------------------------------------------------


@attrs.frozen
class _Plan:
    """Rows to run (parsed), rows that failed to parse (records), and rows skipped."""

    todo: tuple[BatchRow, ...]
    invalid: tuple[dict[str, Any], ...]
    skipped: int
    total: int


def _plan(
    rows: Iterable[Mapping[str, Any]],
    defaults: Mapping[str, Any] | None,
    done: Mapping[str, tuple[str, int]],
) -> _Plan:
    """Sort rows into those to generate, those invalid, and those done before.

    A row counts as done when its id was generated without error and its image is still there,
    and (for a row that parses) with the same prompt and seed: a row whose given ``id`` was
    kept while its prompt or seed was edited is generated again.
    """
    if isinstance(rows, (str, bytes, os.PathLike)):
        raise InvalidParameterError(
            "rows", rows, "must be an iterable of mappings; read a file with read_prompts(path)"
        )
    if defaults:
        parse_row({"prompt": ""}, defaults)  # a bad default is the caller's error, up front
    todo: list[BatchRow] = []
    invalid: list[dict[str, Any]] = []
    seen: dict[str, BatchRow | None] = {}
    skipped = total = 0
    for row in rows:
        total += 1
        parsed: BatchRow | None = None
        record: dict[str, Any] = {}
        try:
            parsed = parse_row(row, defaults)
            row_id = parsed.id
        except InvalidParameterError as e:
            record = failed_record(row, e)
            row_id = record["id"]
        if row_id in seen:
            if seen[row_id] != parsed:
                raise InvalidParameterError(
                    "id",
                    row_id,
                    f"is used by two different rows (row {total} and an earlier one); "
                    "give each row its own id",
                )
            skipped += 1
            continue
        seen[row_id] = parsed
        if row_id in done and (parsed is None or done[row_id] == (parsed.prompt, parsed.seed)):
            skipped += 1
        elif parsed is None:
            invalid.append(record)
        else:
            todo.append(parsed)
    return _Plan(tuple(todo), tuple(invalid), skipped, total)


# --- the output folder -----------------------------------------------------------------------


def _manifest_schema() -> Any:
    pa = _pyarrow()
    return pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("seed", pa.uint64()),
            ("path", pa.string()),
            ("params", pa.string()),
            ("model_sha256", pa.string()),
            ("error", pa.string()),
            ("seconds", pa.float64()),
        ]
    )


def _output_schema() -> Any:
    pa = _pyarrow()
    schema = _manifest_schema()
    return schema.set(schema.get_field_index("path"), pa.field("png", pa.binary()))


def records_table(records: Sequence[Mapping[str, Any]], *, manifest: bool) -> pa.Table:
    """Return records as a pyarrow table with the manifest's or :func:`generate_row`'s schema.

    Example:
        >>> records_table([failed_record({"prompt": "x"}, ValueError("no"))],
        ...               manifest=False).column_names[:4]
        ['id', 'prompt', 'seed', 'png']

    """
    pa = _pyarrow()
    schema = _manifest_schema() if manifest else _output_schema()
    return pa.Table.from_pylist(
        [{name: r.get(name) for name in schema.names} for r in records], schema=schema
    )


class _Output:
    """The output folder: ``images/<id>.png`` and ``manifest/part-NNNNNN.parquet``."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        _pyarrow()
        fsspec = _fsspec()
        if not isinstance(out, (str, os.PathLike)) or not os.fspath(out).strip():
            raise InvalidParameterError("out", out, "must be a folder path or an fsspec URL")
        text = os.fspath(out)
        self.url = text if "://" in text else os.path.abspath(text)  # Ray workers: another cwd
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = str(root).rstrip("/")
        self._local = "file" in _protocols(self.fs)
        if self.fs.isfile(self.root):
            raise InvalidParameterError("out", self.url, "is a file; it must be a folder")
        self.fs.makedirs(self._join("images"), exist_ok=True)
        self.fs.makedirs(self._join("manifest"), exist_ok=True)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write(self, path: str, data: bytes) -> None:
        """Write a whole file so that readers never see half of it."""
        if not self._local:  # object stores and memory:// publish a file only when it is closed
            with self.fs.open(path, "wb") as handle:
                handle.write(data)
            return
        folder, name = path.rsplit("/", 1)
        temp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open(temp, "wb") as handle:
                handle.write(data)
            self.fs.mv(temp, path)
        finally:
            with contextlib.suppress(OSError):
                if self.fs.exists(temp):
                    self.fs.rm(temp)

    def write_image(self, row_id: str, png: bytes) -> str:
        """Write one PNG and return its path relative to the folder."""
        relative = f"images/{row_id}.png"
        self._write(self._join(relative), png)
        return relative

    def image_names(self) -> set[str]:
        try:
            found = self.fs.ls(self._join("images"), detail=False)
        except FileNotFoundError:
            return set()
        return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in found}

    def _parts(self) -> list[str]:
        try:
            found = self.fs.ls(self._join("manifest"), detail=False)
        except FileNotFoundError:
            return []
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in found]
        return sorted(n for n in names if re.fullmatch(r"part-\d{6,}\.parquet", n))

    def read(self) -> pa.Table:
        """Return the manifest: the latest record of each id, in first-seen order."""
        pa = _pyarrow()
        import pyarrow.parquet as pq

        tables = []
        for name in self._parts():
            path = self._join("manifest", name)
            try:
                with self.fs.open(path, "rb") as handle:
                    tables.append(pq.read_table(handle).select(list(MANIFEST_COLUMNS)))
            except (OSError, KeyError, pa.ArrowException) as e:
                raise InvalidParameterError(
                    "out",
                    self.url,
                    f"has a manifest part {name} that is not a readable inferkit manifest "
                    f"({e}); delete that file to regenerate its rows",
                ) from e
        if not tables:
            return records_table([], manifest=True)
        latest: dict[str, dict[str, Any]] = {}
        for table in tables:
            for record in table.cast(_manifest_schema()).to_pylist():
                latest.pop(record["id"], None)  # a newer record moves to the end
                latest[record["id"]] = record
        return records_table(list(latest.values()), manifest=True)

    def done(self) -> dict[str, tuple[str, int]]:
        """Ids recorded without error whose image is still there, with their prompt and seed."""
        images = self.image_names()
        table = self.read()
        return {
            r["id"]: (r["prompt"], r["seed"])
            for r in table.select(["id", "prompt", "seed", "error", "path"]).to_pylist()
            if r["error"] is None and r["path"] and r["path"].rsplit("/", 1)[-1] in images
        }

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write records as a new manifest part."""
        if not records:
            return
        import pyarrow.parquet as pq

        parts = self._parts()
        number = int(parts[-1][5:-8]) + 1 if parts else 1
        buffer = io.BytesIO()
        pq.write_table(records_table(records, manifest=True), buffer)
        self._write(self._join("manifest", f"part-{number:06d}.parquet"), buffer.getvalue())

    def compact(self) -> None:
        """Rewrite the manifest as one part with the latest record of each id."""
        parts = self._parts()
        if len(parts) <= 1:
            return
        import pyarrow.parquet as pq

        table = self.read()
        number = int(parts[-1][5:-8]) + 1
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self._write(self._join("manifest", f"part-{number:06d}.parquet"), buffer.getvalue())
        for name in parts:  # a crash here leaves duplicates, which read() resolves the same way
            self.fs.rm(self._join("manifest", name))


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def read_manifest(out: str | os.PathLike[str]) -> pa.Table:
    """Read an output folder's manifest: one record per row id, the latest run's.

    The manifest is the Parquet dataset ``OUT/manifest/`` (one ``part-NNNNNN.parquet`` per flush;
    a finished run compacts them into one). Its columns are :data:`MANIFEST_COLUMNS`:

    - ``id``: the row id; ``path``: the image, relative to ``OUT`` (``images/<id>.png``), or
      ``None`` for a failed row.
    - ``prompt``, ``seed`` (``uint64``): what was asked for.
    - ``params``: JSON of the :class:`ResolvedParams` the image was made with (for a failed row,
      the row as given).
    - ``model_sha256``: the model's full sha256.
    - ``error``: ``None``, or ``"ErrorType: message"``.
    - ``seconds``: wall time of the row.

    Returns:
        A ``pyarrow.Table`` (``.to_pandas()``, ``.to_pylist()``).

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> _ = run_local(model, [{"prompt": "a cat", "steps": 2}], "memory://doc-manifest",
        ...               progress=False)
        >>> read_manifest("memory://doc-manifest").column("path").to_pylist()
        ['images/cefeac2835fe7b8d.png']

    """
    return _Output(out).read()


# --- the local loop --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BatchSummary:
    """What a batch run did.

    Attributes:
        out: the output folder or URL.
        total: rows given.
        done: rows generated in this run.
        skipped: rows already done by an earlier run (or repeating an earlier row).
        failed: rows recorded with an error in this run.
        seconds: wall time of the run, model loading included.
        failed_ids: the ids of the failed rows.

    Example:
        >>> summary = BatchSummary(out="o", total=4, done=4, skipped=0, failed=0, seconds=2.0)
        >>> summary.images_per_second
        2.0

    """

    out: str
    total: int
    done: int
    skipped: int
    failed: int
    seconds: float
    failed_ids: tuple[str, ...] = ()

    @property
    def images_per_second(self) -> float:
        """Images generated per second of the run."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        """One line for people."""
        return (
            f"{self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} rows "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s) -> {self.out}"
        )


class _Recorder:
    """Collects records and appends them to the manifest every ``flush_every`` rows or 30 s."""

    def __init__(self, output: _Output, flush_every: int) -> None:
        self.output = output
        self.flush_every = flush_every
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.done = 0
        self.failed: list[str] = []

    def add(self, record: Mapping[str, Any]) -> None:
        entry = {name: record.get(name) for name in MANIFEST_COLUMNS}
        if entry["error"] is None:
            self.done += 1
        else:
            self.failed.append(str(entry["id"]))
        self.pending.append(entry)
        now = time.monotonic()
        if len(self.pending) >= self.flush_every or now - self.last >= _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.output.append(self.pending)
        self.pending = []
        self.last = time.monotonic()


def check_flush_every(flush_every: int) -> None:
    """Check a ``flush_every`` argument."""
    if not isinstance(flush_every, int) or isinstance(flush_every, bool) or flush_every < 1:
        raise InvalidParameterError("flush_every", flush_every, "must be an integer >= 1")


def run_local(
    model_source: str | os.PathLike[str] | Model,
    rows: Iterable[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    progress: bool = True,
    flush_every: int = 32,
    **load_kwargs: Any,
) -> BatchSummary:
    """Generate every row on this machine, one after another, into ``out``; resumable.

    Writes ``OUT/images/<id>.png`` (with inferkit's PNG metadata) and the manifest
    (:func:`read_manifest`). ``out`` is a local folder or any fsspec URL (``s3://bucket/run``
    with ``s3fs`` installed, ``memory://run`` in tests). The manifest gets a new part every
    ``flush_every`` rows or 30 seconds, whichever comes first, so a killed run loses at most
    that much bookkeeping (its images are made again, identically, by the next run).

    Running again with the same rows and ``out`` skips every row whose manifest record has no
    error and whose image file exists; failed rows are tried again. The model is loaded only
    when there is something to do.

    Args:
        model_source: a loaded :class:`Model` (used as is, not closed), or a source for
            :meth:`Model.load`.
        rows: mappings with the :data:`COLUMNS`.
        out: the output folder or URL; created if missing.
        defaults: values for columns a row leaves missing, such as ``{"steps": 20}``.
        progress: show a progress bar.
        flush_every: rows per manifest part.
        **load_kwargs: passed to :meth:`Model.load` (``device``, ``dtype``, ``scheduler``...).

    Raises:
        MissingExtraError: ``pyarrow`` or ``fsspec`` is not installed.
        InvalidParameterError: a bad ``defaults`` or ``flush_every``, or two different rows share
            an id (before any work). Bad rows do not raise: they are recorded as failed.

    Example:
        >>> import inferkit
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> rows = [{"prompt": "a cat", "seed": 1}, {"prompt": "a dog", "steps": 0}]
        >>> summary = run_local(model, rows, "memory://doc-run", defaults={"steps": 2},
        ...                     progress=False)
        >>> summary.done, summary.failed
        (1, 1)
        >>> run_local(model, rows, "memory://doc-run", defaults={"steps": 2},
        ...           progress=False).skipped  # the done row is skipped, the failed one retried
        1

    """
    from inferkit.model import Model

    started = time.perf_counter()
    check_flush_every(flush_every)
    if isinstance(model_source, Model) and load_kwargs:
        raise InvalidParameterError(
            next(iter(load_kwargs)),
            next(iter(load_kwargs.values())),
            "is a Model.load option, but the model is already loaded",
        )
    output = _Output(out)
    plan = _plan(rows, defaults, output.done())
    recorder = _Recorder(output, flush_every)
    for record in plan.invalid:
        recorder.add(record)
    try:
        if plan.todo:
            own = not isinstance(model_source, Model)
            model = (
                model_source
                if isinstance(model_source, Model)
                else Model.load(model_source, **load_kwargs)
            )
            try:
                for row in _progress(plan.todo, progress):
                    record = generate_row(model, row)
                    if record["png"] is not None:
                        record["path"] = output.write_image(row.id, record["png"])
                    recorder.add(record)
            finally:
                if own:
                    model.close()
    finally:
        recorder.flush()
    output.compact()
    return BatchSummary(
        out=output.url,
        total=plan.total,
        done=recorder.done,
        skipped=plan.skipped,
        failed=len(recorder.failed),
        seconds=time.perf_counter() - started,
        failed_ids=tuple(recorder.failed),
    )


def _progress(rows: Sequence[BatchRow], show: bool) -> Iterator[BatchRow]:
    if not show:
        yield from rows
        return
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), unit="image", desc="inferkit batch") as bar:
        for row in rows:
            yield row
            bar.update(1)

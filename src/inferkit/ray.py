"""Scale-out on Ray Data: the same rows as :func:`inferkit.batch.run_local`, on many machines.

inferkit does not schedule machines itself; it plugs into `Ray Data
<https://docs.ray.io/en/latest/data/data.html>`_. :class:`InferkitPredictor` is a callable class
for ``Dataset.map_batches``: each actor loads the model once and turns rows (``prompt``,
``seed``, parameters; see :data:`inferkit.batch.COLUMNS`) into records (PNG bytes or a written
file, seed, parameters, model hash). :func:`generate` sets the actors, their GPU or CPU resources
and the batch size up for you and, given ``out``, writes images and a resumable manifest exactly
as :func:`~inferkit.batch.run_local` does. Images are the same as ``model.infer`` makes for the
same prompt and seed: every row runs alone, with its own seed.

Needs ``pip install "inferkit[ray]"``. This module imports Ray only when :func:`generate` runs,
so importing it is cheap and works without Ray.

Example:
    On a cluster started with ``ray start --head`` (and ``ray start --address=HEAD:6379`` on the
    other machines), from any of its machines::

        import inferkit.ray

        summary = inferkit.ray.generate(
            [{"prompt": "a red circle", "seed": 1}, {"prompt": "a blue square"}],
            "inferkit:shapes", out="s3://bucket/run-1", address="auto", gpus_per_worker=1,
            defaults={"steps": 20})
        print(summary)  # 2 done, 0 skipped, 0 failed of 2 rows in 9.1 s (...) -> s3://...

"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, overload

from inferkit.batch import (
    COLUMNS,
    BatchRow,
    BatchSummary,
    _Output,
    _plan,
    _Recorder,
    _require,
    check_flush_every,
    failed_record,
    generate_row,
    parse_row,
    records_table,
)
from inferkit.errors import InvalidParameterError

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

    from inferkit.model import Model

__all__ = ["InferkitPredictor", "generate"]


def _batch_rows(batch: Any) -> list[dict[str, Any]]:
    """Rows of a Ray batch in any of its formats: pyarrow, pandas, or a dict of arrays."""
    if hasattr(batch, "to_pylist"):  # pyarrow.Table
        rows: list[dict[str, Any]] = batch.to_pylist()
        return rows
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        records: list[dict[str, Any]] = batch.to_dict("records")
        return records
    if isinstance(batch, Mapping):
        columns = {str(k): list(v) for k, v in batch.items()}
        count = len(next(iter(columns.values()))) if columns else 0
        return [{k: v[i] for k, v in columns.items()} for i in range(count)]
    raise InvalidParameterError(
        "batch", type(batch).__name__, "must be a pyarrow Table, a pandas DataFrame or a dict"
    )


class InferkitPredictor:
    """A callable class for ``Dataset.map_batches``: one model per actor, one record per row.

    Without ``out``, each output row has the columns of :func:`inferkit.batch.generate_row`
    (``id``, ``prompt``, ``seed``, ``png`` bytes, ``params``, ``model_sha256``, ``error``,
    ``seconds``). With ``out``, the actor writes ``OUT/images/<id>.png`` itself (so image bytes
    never pass through the driver) and returns manifest records (``path`` instead of ``png``)
    plus a boolean ``skipped`` column, true for rows whose id is in ``skip``. A row that fails
    is returned with its ``error``; it does not stop the job.

    Args:
        model_source: what every actor passes to :meth:`Model.load` (a path all machines can
            read, a cached repo id, or ``"inferkit:NAME"``).
        out: a folder or fsspec URL every actor can write to, or ``None``.
        defaults: values for columns a row leaves missing (``{"steps": 20}``).
        skip: row ids to pass over (already done).
        **load_kwargs: passed to :meth:`Model.load` (``device``, ``dtype``...).

    Example:
        >>> import inferkit
        >>> predict = InferkitPredictor(inferkit.testing.tiny_model_path("sd1"), device="cpu")
        >>> table = predict({"prompt": ["a cat", "a dog"], "seed": [1, 2], "steps": [2, 2]})
        >>> table.column("seed").to_pylist(), table.column("error").to_pylist()
        ([1, 2], [None, None])

        With Ray, the same class runs on every actor::

            ds.map_batches(InferkitPredictor, fn_constructor_kwargs={"model_source": "..."},
                           batch_size=4, compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1)

    """

    def __init__(
        self,
        model_source: str | os.PathLike[str],
        *,
        out: str | os.PathLike[str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        skip: Iterable[str] = (),
        **load_kwargs: Any,
    ) -> None:
        """Load the model (once per actor) and open the output folder, if any."""
        from inferkit.model import Model

        if defaults:
            parse_row({"prompt": ""}, defaults)
        self._defaults = dict(defaults or {})
        self._skip = frozenset(skip)
        self._output = _Output(out) if out is not None else None
        self._model: Model = Model.load(model_source, **load_kwargs)

    def __call__(self, batch: Any) -> pa.Table:
        """Generate every row of a batch; return a pyarrow table of records."""
        records: list[dict[str, Any]] = []
        for raw in _batch_rows(batch):
            record = self._one(raw)
            if record is not None:
                records.append(record)
        table = records_table(records, manifest=self._output is not None)
        if self._output is None:
            return table
        skipped = [bool(r.get("skipped")) for r in records]
        return table.append_column("skipped", _bool_array(skipped))

    def _one(self, raw: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            row: BatchRow | Mapping[str, Any] = parse_row(raw, self._defaults)
        except InvalidParameterError as e:
            return failed_record(raw, e)
        assert isinstance(row, BatchRow)
        if row.id in self._skip:
            return {"id": row.id, "prompt": row.prompt, "seed": row.seed, "skipped": True}
        record = generate_row(self._model, row)
        if self._output is not None and record["png"] is not None:
            record["path"] = self._output.write_image(row.id, record["png"])
        return record


def _bool_array(values: list[bool]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.bool_())


def _import_ray() -> Any:
    return _require("ray", "ray", "inferkit.ray")


def _ensure_ray(ray: Any, address: str | None, cpus: int | None) -> None:
    """Connect to ``address`` or start a local Ray instance, unless Ray is already running.

    A local instance gets no dashboard and no usage reporting, so it never reaches the network.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = {
        "include_dashboard": False,
        "ignore_reinit_error": True,
        "log_to_driver": False,
    }
    if address is None:
        options["num_cpus"] = cpus
    ray.init(address=address, **options)


def _positive(name: str, value: Any, *, integer: bool, zero: bool = False) -> None:
    number = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not number or not math.isfinite(value) or not (value >= 0 if zero else value > 0):
        kind = "an integer" if integer else "a number"
        raise InvalidParameterError(name, value, f"must be {kind} {'>= 0' if zero else '> 0'}")


def _wire(rows: Iterable[BatchRow]) -> Any:
    """Return parsed rows as an Arrow table of fixed types (seeds as text: they exceed int64)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("negative_prompt", pa.string()),
            ("seed", pa.string()),
            ("steps", pa.int64()),
            ("guidance", pa.float64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("scheduler", pa.string()),
        ]
    )
    assert tuple(schema.names) == COLUMNS
    data = [{**r.as_row(), "seed": str(r.seed)} for r in rows]
    return pa.Table.from_pylist(data, schema=schema)


@overload
def generate(
    dataset_or_rows: Dataset | Iterable[Mapping[str, Any]],
    model_source: str | os.PathLike[str],
    *,
    out: None = None,
    defaults: Mapping[str, Any] | None = ...,
    workers: int | None = ...,
    gpus_per_worker: float | None = ...,
    cpus_per_worker: float = ...,
    batch_size: int | None = ...,
    address: str | None = ...,
    flush_every: int = ...,
    progress: bool = ...,
    **load_kwargs: Any,
) -> Dataset: ...


@overload
def generate(
    dataset_or_rows: Dataset | Iterable[Mapping[str, Any]],
    model_source: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    defaults: Mapping[str, Any] | None = ...,
    workers: int | None = ...,
    gpus_per_worker: float | None = ...,
    cpus_per_worker: float = ...,
    batch_size: int | None = ...,
    address: str | None = ...,
    flush_every: int = ...,
    progress: bool = ...,
    **load_kwargs: Any,
) -> BatchSummary: ...


def generate(
    dataset_or_rows: Dataset | Iterable[Mapping[str, Any]],
    model_source: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    batch_size: int | None = None,
    address: str | None = None,
    flush_every: int = 32,
    progress: bool = True,
    **load_kwargs: Any,
) -> Dataset | BatchSummary:
    """Generate rows on a Ray cluster: return a Dataset, or write ``out`` and return a summary.

    Ray is used as it is when already initialised. Otherwise this connects to ``address``
    (``"auto"``, ``"ray://head:10001"``...) or, when ``address`` is ``None``, starts a local
    instance with this machine's CPUs, no dashboard and no usage reporting. Ray keeps running
    afterwards (a returned Dataset is lazy and needs it); call ``ray.shutdown()`` when done.

    Args:
        dataset_or_rows: a Ray Dataset with the :data:`~inferkit.batch.COLUMNS`, or mappings
            (from :func:`~inferkit.batch.read_prompts` or Python).
        model_source: what every worker loads (a path all machines can read, a cached repo id
            or ``"inferkit:NAME"``; a loaded :class:`Model` cannot be shipped).
        out: where to write ``images/`` and the manifest (a folder or fsspec URL that every
            worker can write to: on a real cluster, shared storage or ``s3://...``). Without it,
            the lazy Dataset of :func:`~inferkit.batch.generate_row` records is returned.
        defaults: values for columns a row leaves missing (``{"steps": 20}``).
        workers: actors, each with its own model; default: the cluster's GPUs divided by
            ``gpus_per_worker`` when that is above 0, else its CPUs divided by
            ``cpus_per_worker``.
        gpus_per_worker: GPUs per actor; default 1 when the cluster has GPUs, else 0 (and
            models load on the CPU).
        cpus_per_worker: CPUs per actor (also its torch thread count, as Ray sets it).
        batch_size: rows per ``map_batches`` batch; default: enough batches to keep every
            worker busy (rows / (4 * workers), between 1 and 16).
        address: the Ray cluster to connect to when Ray is not initialised yet.
        flush_every: with ``out``, rows per manifest part (see :func:`inferkit.batch.run_local`).
        progress: with ``out``, show a progress bar on the driver.
        **load_kwargs: passed to :meth:`Model.load` on every worker.

    Returns:
        Without ``out``, a Ray Dataset of records (lazy: nothing runs until it is consumed).
        With ``out``, a :class:`~inferkit.batch.BatchSummary`.

    Raises:
        MissingExtraError: Ray (or pyarrow/fsspec) is not installed.
        InvalidParameterError: an argument is invalid, or two different rows share an id.

    With ``out``, it is resumable like :func:`~inferkit.batch.run_local`: rows already done are
    skipped (rows from a list are filtered before anything is submitted, and when nothing is
    left Ray is not even started), failed rows are tried again, and the manifest gets a new part
    every ``flush_every`` rows or 30 seconds.

    Example:
        Without ``out``, compose the lazy Dataset with the rest of a Ray pipeline::

            ds = inferkit.ray.generate([{"prompt": "a red circle", "seed": 1}],
                                       "inferkit:shapes", defaults={"steps": 8}, workers=2)
            ds.write_parquet("s3://bucket/images-as-rows")   # or ds.take_all()

    """
    from inferkit.model import Model

    started = time.perf_counter()
    if isinstance(model_source, Model):
        raise InvalidParameterError(
            "model_source",
            model_source,
            "must be a path, repo id or 'inferkit:NAME' that every worker can load; a loaded "
            "Model cannot be shipped to Ray workers",
        )
    if workers is not None:
        _positive("workers", workers, integer=True)
    if gpus_per_worker is not None:
        _positive("gpus_per_worker", gpus_per_worker, integer=False, zero=True)
    _positive("cpus_per_worker", cpus_per_worker, integer=False)
    if batch_size is not None:
        _positive("batch_size", batch_size, integer=True)
    check_flush_every(flush_every)
    if defaults:
        parse_row({"prompt": ""}, defaults)
    output = _Output(out) if out is not None else None
    is_dataset = hasattr(dataset_or_rows, "map_batches")
    if is_dataset:
        plan = None
        done = frozenset(output.done()) if output is not None else frozenset()
    else:
        plan = _plan(dataset_or_rows, defaults, output.done() if output else {})
        done = frozenset()
        if output is not None and not plan.todo:  # nothing to submit: no Ray at all
            recorder = _Recorder(output, flush_every)
            for record in plan.invalid:
                recorder.add(record)
            recorder.flush()
            output.compact()
            return _summary(output, plan.total, recorder, plan.skipped, started)

    ray = _import_ray()
    _require("ray.data", "ray", "inferkit.ray")
    wanted_cpus = math.ceil((workers or 1) * cpus_per_worker)
    _ensure_ray(ray, address, max(os.cpu_count() or 1, wanted_cpus))
    resources = ray.cluster_resources()
    gpus = (
        gpus_per_worker
        if gpus_per_worker is not None
        else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
    )
    if workers is None:
        if gpus > 0:
            workers = max(1, int(resources.get("GPU", 0) // gpus))
        else:
            workers = max(1, int(resources.get("CPU", 1) // cpus_per_worker))
    options = dict(load_kwargs)
    if gpus == 0:
        options.setdefault("device", "cpu")

    if plan is not None:
        count = len(plan.todo)
        size = batch_size or max(1, min(16, count // (4 * workers)))
        table = _wire(plan.todo)
        slices = [table.slice(i, size) for i in range(0, count, size)] or [table]
        dataset = ray.data.from_arrow(slices)
    else:
        dataset = dataset_or_rows
        size = batch_size or 4

    constructor: dict[str, Any] = {
        "model_source": os.fspath(model_source),
        "out": output.url if output is not None else None,
        "defaults": dict(defaults or {}),
        "skip": done,
        **options,
    }
    remote: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if gpus > 0:
        remote["num_gpus"] = gpus
    mapped = dataset.map_batches(
        InferkitPredictor,
        fn_constructor_kwargs=constructor,
        batch_size=size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        **remote,
    )
    if output is None:
        if plan is not None and plan.invalid:
            invalid = records_table(list(plan.invalid), manifest=False)
            mapped = mapped.union(ray.data.from_arrow(invalid))
        return mapped

    recorder = _Recorder(output, flush_every)
    for record in plan.invalid if plan is not None else ():
        recorder.add(record)
    skipped = plan.skipped if plan is not None else 0
    total = plan.total if plan is not None else 0
    bar = _bar(len(plan.todo) if plan is not None else None, progress)
    try:
        for batch in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
            for record in batch.to_pylist():
                if plan is None:
                    total += 1
                if record.pop("skipped", False):
                    skipped += 1
                    continue
                recorder.add(record)
                if bar is not None:
                    bar.update(1)
    finally:
        recorder.flush()
        if bar is not None:
            bar.close()
    output.compact()
    return _summary(output, total, recorder, skipped, started)


def _bar(total: int | None, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="image", desc="inferkit ray")


def _summary(
    output: _Output, total: int, recorder: _Recorder, skipped: int, started: float
) -> BatchSummary:
    return BatchSummary(
        out=output.url,
        total=total,
        done=recorder.done,
        skipped=skipped,
        failed=len(recorder.failed),
        seconds=time.perf_counter() - started,
        failed_ids=tuple(recorder.failed),
    )

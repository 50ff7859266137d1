"""inferkit.ray on a local Ray cluster that the test starts: 2 CPUs, 2 workers, the shapes model.

Each Ray actor runs torch with one thread (Ray sets it from ``cpus_per_worker=1``), and CPU
floating-point sums depend on the thread count, so the reference images are made with one
thread too: then they are identical bit for bit.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import inferkit
from inferkit.batch import MANIFEST_COLUMNS, OUTPUT_COLUMNS, parse_row, read_manifest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
import inferkit.ray  # noqa: E402

STEPS = 8
ROWS: list[dict[str, Any]] = [
    {"prompt": "a red circle on a white background", "seed": 1},
    {"prompt": "a blue square on a white background", "seed": 2},
    {"prompt": "a green triangle on a white background", "seed": 3},
    {"prompt": "a yellow circle on a white background", "seed": 2**64 - 1},
    {"prompt": "a red square on a white background"},  # seed derived from the row id
    {"prompt": "a blue triangle on a white background", "id": "blue-triangle"},
]


def _pixels(data: bytes | Path) -> bytes:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return image.convert("RGB").tobytes()


@pytest.fixture(scope="module")
def expected() -> dict[str, bytes]:
    """Pixels from model.infer directly, with the actors' one torch thread, by row id (and the
    model's sha256 under "sha256")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with inferkit.Model.load("inferkit:shapes", device="cpu") as model:
            out = {}
            for row in ROWS:
                parsed = parse_row(row, {"steps": STEPS})
                image = model.infer(parsed.prompt, seed=parsed.seed, steps=STEPS, progress=False)
                out[parsed.id] = image.images[0].image.tobytes()
            out["sha256"] = model.info.sha256.encode()
            return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[None]:
    """A Ray instance on this machine only: 2 CPUs, no dashboard, no usage reporting."""
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_the_predictor_turns_any_batch_format_into_records() -> None:
    """A callable class for map_batches: pyarrow, pandas or dict batches in, records out."""
    import pandas as pd

    predict = inferkit.ray.InferkitPredictor(inferkit.testing.tiny_model_path("sd1"))
    batch = {"prompt": ["a cat", "a dog"], "seed": [1, 2], "steps": [2, 0]}
    for given in (batch, pd.DataFrame(batch), pd.DataFrame(batch).pipe(_arrow)):
        table = predict(given)
        assert tuple(table.column_names) == OUTPUT_COLUMNS
        errors = table.column("error").to_pylist()
        assert errors[0] is None
        assert errors[1].startswith("InvalidParameterError: steps=0")


def _arrow(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame)


@pytest.mark.slow
def test_two_ray_workers_make_model_infers_images_and_a_resumable_manifest(
    expected: dict[str, bytes], local_cluster: None, tmp_path: Path
) -> None:
    """6 rows (and 1 bad one) on 2 actors: same pixels as model.infer, a full manifest, and a
    rerun that skips every done row without submitting anything; a Dataset in works too."""
    sha256 = expected.pop("sha256").decode()
    out = tmp_path / "run"
    rows = [*ROWS, {"prompt": "a bad row", "steps": "many"}]
    summary = inferkit.ray.generate(
        rows, "inferkit:shapes", out=out, defaults={"steps": STEPS}, workers=2, progress=False
    )
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (7, 6, 1, 0)

    records = {r["id"]: r for r in read_manifest(out).to_pylist()}
    assert tuple(read_manifest(out).column_names) == MANIFEST_COLUMNS
    assert set(expected) <= set(records)
    for row_id, pixels in expected.items():
        record = records[row_id]
        assert record["error"] is None
        assert record["path"] == f"images/{row_id}.png"
        assert _pixels(out / record["path"]) == pixels
        assert record["model_sha256"] == sha256
    [bad] = [r for r in records.values() if r["error"] is not None]
    assert bad["error"].startswith("InvalidParameterError: steps='many'")

    again = inferkit.ray.generate(
        rows, "inferkit:shapes", out=out, defaults={"steps": STEPS}, workers=2, progress=False
    )
    assert (again.done, again.skipped, again.failed) == (0, 6, 1)

    dataset = ray.data.from_items([{"prompt": r["prompt"], "seed": str(r.get("seed", ""))}
                                   for r in ROWS[:2]])  # fmt: skip
    from_dataset = inferkit.ray.generate(
        dataset, "inferkit:shapes", defaults={"steps": STEPS}, workers=2, batch_size=1
    ).take_all()
    by_id = {r["id"]: r for r in from_dataset}
    for row in ROWS[:2]:
        row_id = parse_row(row, {"steps": STEPS}).id
        assert _pixels(by_id[row_id]["png"]) == expected[row_id]

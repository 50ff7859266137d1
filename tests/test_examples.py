"""Every script in examples/ runs as a user would run it, and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import inferkit

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """The example exits 0 offline; its generated PNGs carry readable metadata (contact sheets,
    named *-grid.png, are composites and carry none)."""
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs, "the example wrote no image"
    for png in pngs:
        if not png.name.endswith("-grid.png"):
            assert inferkit.read_metadata(png).prompt

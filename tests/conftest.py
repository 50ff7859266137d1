"""Shared fixtures: tiny models written once per test session, and offline guards."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one torch thread each (also for the CLI and
    # example subprocesses) beats every worker fighting over all cores, by about a third here.
    os.environ["OMP_NUM_THREADS"] = "1"

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import inferkit
import inferkit.testing

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

# Tests never reach the network: the hub library is told so, and any socket use fails loudly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The first example of a test may import diffusers; deadlines would make that flaky.
settings.register_profile("inferkit", deadline=None, max_examples=60)
settings.load_profile("inferkit")


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        arch: inferkit.testing.write_tiny_model(root / arch, arch)
        for arch in inferkit.testing.ARCHITECTURES
    }


@pytest.fixture(scope="session")
def sd1_path(tiny_paths: dict[str, Path]) -> Path:
    return tiny_paths["sd1"]


@pytest.fixture(scope="session")
def sd1(sd1_path: Path) -> Iterator[inferkit.Model]:
    with inferkit.Model.load(sd1_path, device="cpu") as model:
        yield model


@pytest.fixture(scope="session")
def models(tiny_paths: dict[str, Path]) -> Iterator[dict[str, inferkit.Model]]:
    loaded = {arch: inferkit.Model.load(p, device="cpu") for arch, p in tiny_paths.items()}
    yield loaded
    for m in loaded.values():
        m.close()


class NetworkAttempted(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Make every socket connection attempt fail and record it."""
    attempts: list[tuple[object, ...]] = []

    def refuse(self: socket.socket, address: object, *args: object) -> None:
        attempts.append((address,))
        raise NetworkAttempted(f"network connection attempted to {address!r}")

    def refuse_lookup(*args: object, **kwargs: object) -> list[object]:
        attempts.append(args)
        raise NetworkAttempted(f"DNS lookup attempted for {args[0]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0]))
    return attempts


def pixels(image: inferkit.GeneratedImage) -> bytes:
    return image.image.tobytes()


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME of our own, with HF_HUB_OFFLINE on."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"

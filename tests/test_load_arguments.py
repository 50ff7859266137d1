"""Property tests over Model.load's arguments: every invalid value raises the documented
inferkit error before any loader runs, and every valid one is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import inferkit

_VALID_DEVICES = ["auto", "cpu"]
_VALID_DTYPES = ["auto", "float32", "fp32", "bfloat16", "bf16", torch.float32, torch.bfloat16]


class _SpyLoader:
    """Accepts ``spy:`` sources and records whether loading started."""

    name = "spy"
    options = frozenset({"flavour"})

    def __init__(self, real: Path) -> None:
        self.real = real
        self.loads = 0

    def accepts(self, source: str, options: inferkit.LoadOptions) -> bool:
        return source.startswith("spy:")

    def load(self, source: str, options: inferkit.LoadOptions) -> inferkit.Components:
        self.loads += 1
        from inferkit.loaders.folder import FolderLoader

        return FolderLoader().load(str(self.real), options)


@pytest.fixture(scope="module")
def spy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SpyLoader]:
    real = inferkit.testing.write_tiny_model(tmp_path_factory.mktemp("spy") / "m", "sd1")
    loader = _SpyLoader(real)
    inferkit.register_loader(loader, first=True)
    yield loader
    inferkit.unregister_loader("spy")


_bad_device = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(min_size=1)
    .filter(lambda s: s.strip() not in ("auto", "cpu", "cuda", "mps"))
    .filter(lambda s: not s.startswith(("cpu:", "cuda", "mps"))),
)
_bad_dtype = st.one_of(
    st.integers(),
    st.sampled_from([torch.int8, torch.float64, torch.complex64]),
    st.text().filter(lambda s: s not in {"auto", "float32", "fp32", "float16", "fp16", "half",
                                          "bfloat16", "bf16"}),
)  # fmt: skip
_bad_flag = st.one_of(st.integers(), st.text(), st.floats(), st.none())


@given(device=_bad_device)
def test_invalid_device_is_refused_before_loading(spy: _SpyLoader, device: Any) -> None:
    """A device that is not a device string is an InvalidParameterError or, when it names a
    device this machine lacks, a DeviceUnavailableError; the loader never runs."""
    before = spy.loads
    with pytest.raises((inferkit.InvalidParameterError, inferkit.DeviceUnavailableError)):
        inferkit.Model.load("spy:model", device=device)
    assert spy.loads == before


@given(dtype=_bad_dtype)
def test_invalid_dtype_is_refused_before_loading(spy: _SpyLoader, dtype: Any) -> None:
    """Anything but float32/float16/bfloat16 (by name or torch dtype) or 'auto' is refused."""
    before = spy.loads
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.Model.load("spy:model", dtype=dtype)
    assert caught.value.name == "dtype"
    assert spy.loads == before


@given(
    name=st.sampled_from(["allow_pickle", "strict", "verify", "local_files_only"]),
    value=_bad_flag,
)
def test_flags_must_be_booleans(spy: _SpyLoader, name: str, value: Any) -> None:
    """Boolean flags refuse every non-boolean (None means 'follow HF_HUB_OFFLINE' only for
    local_files_only)."""
    if name == "local_files_only" and value is None:
        return
    before = spy.loads
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.Model.load("spy:model", **{name: value})
    assert caught.value.name == name
    assert spy.loads == before


@given(
    source=st.one_of(st.none(), st.integers(), st.just(""), st.text(alphabet=" \t\n", min_size=1))
)
def test_source_must_be_a_non_empty_path_or_repo_id(spy: _SpyLoader, source: Any) -> None:
    """Empty or non-text sources are refused by name."""
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.Model.load(source)
    assert caught.value.name == "source"


@given(scheduler=st.text(min_size=1).filter(lambda s: s.strip() and len(s) < 40))
def test_unknown_scheduler_is_refused_before_loading(spy: _SpyLoader, scheduler: str) -> None:
    """A scheduler name no sampler answers to is an UnknownSchedulerError; a known one is
    accepted."""
    before = spy.loads
    try:
        inferkit.resolve_scheduler(scheduler)
    except inferkit.UnknownSchedulerError:
        with pytest.raises(inferkit.UnknownSchedulerError):
            inferkit.Model.load("spy:model", scheduler=scheduler)
        assert spy.loads == before


@given(option=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_unknown_loader_option_is_refused_before_loading(spy: _SpyLoader, option: str) -> None:
    """Keyword options the chosen loader does not declare are refused by name."""
    if option in {"flavour", "vae"} or option in _load_params():
        return
    before = spy.loads
    with pytest.raises(inferkit.InvalidParameterError) as caught:
        inferkit.Model.load("spy:model", **{option: 1})
    assert caught.value.name == option
    assert spy.loads == before


def _load_params() -> set[str]:
    import inspect

    return set(inspect.signature(inferkit.Model.load).parameters)


@given(
    device=st.sampled_from(_VALID_DEVICES),
    dtype=st.sampled_from(_VALID_DTYPES),
    strict=st.booleans(),
    scheduler=st.sampled_from([None, "euler", "DPM++ 2M Karras", "ddim"]),
)
def test_valid_arguments_are_accepted(
    spy: _SpyLoader, device: str, dtype: Any, strict: bool, scheduler: str | None
) -> None:
    """Every combination of valid arguments loads (the loader runs once per load)."""
    before = spy.loads
    model = inferkit.Model.load(
        "spy:model", device=device, dtype=dtype, strict=strict, scheduler=scheduler, flavour=1
    )
    assert spy.loads == before + 1
    assert model.plan.device == "cpu"
    model.close()

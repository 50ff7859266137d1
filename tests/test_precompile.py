"""Precompiled networks (FastPolicy(precompile=True)): a new process loads the compiled code
from the cache instead of tracing again, gets the same numbers, and sees weights changed in
place; anything it cannot keep falls back to ordinary compilation with a warning."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from inferkit._arguments import signature
from inferkit._precompile import (
    PrecompiledCall,
    _without_instance_forward,
    precompile_supported,
)

pytestmark = pytest.mark.skipif(
    not precompile_supported(), reason="this torch cannot save compiled functions"
)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, tag: object = None) -> torch.Tensor:
        return torch.relu(self.lin(x))


X = torch.arange(16.0).reshape(2, 8) / 16


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Net, Path, torch.Tensor]:
    """One network compiled once into a cache folder."""
    folder = tmp_path_factory.mktemp("cache")
    net = Net()
    call = PrecompiledCall(net, folder)
    with torch.inference_mode():
        out = call(X)
    assert (call.saved, call.loaded) == (1, 0)
    return net, folder, out


def test_a_new_call_loads_the_saved_code_and_gives_the_same_numbers(
    compiled: tuple[Net, Path, torch.Tensor],
) -> None:
    """A fresh PrecompiledCall over the same folder (as in a new process) loads the file
    without compiling, and its output is bit-identical to the first one's."""
    net, folder, out = compiled
    again = PrecompiledCall(net, folder)
    with torch.inference_mode():
        got = again(X)
    assert (again.saved, again.loaded) == (0, 1)
    assert torch.equal(got, out)


def test_loaded_code_sees_weights_changed_in_place(
    compiled: tuple[Net, Path, torch.Tensor],
) -> None:
    """The saved code reads the module's weights when it runs, so an in-place change (a LoRA
    merge) takes effect without compiling again."""
    _, folder, _ = compiled
    net = Net()
    call = PrecompiledCall(net, folder)
    with torch.no_grad():
        net.lin.weight.mul_(-1.0)
    with torch.inference_mode():
        got = call(X)
        want = net(X)
    assert call.loaded == 1
    torch.testing.assert_close(got, want)


def test_a_damaged_file_is_compiled_again_with_a_warning(
    compiled: tuple[Net, Path, torch.Tensor], tmp_path: Path
) -> None:
    """A truncated file is ignored with a warning naming it, and the network compiles again."""
    net, folder, out = compiled
    damaged = tmp_path / "cache"
    (damaged / "precompiled").mkdir(parents=True)
    for file in (folder / "precompiled").iterdir():
        (damaged / "precompiled" / file.name).write_bytes(file.read_bytes()[:100])
    call = PrecompiledCall(net, damaged)
    with (
        pytest.warns(RuntimeWarning, match="ignoring precompiled file Net-"),
        torch.inference_mode(),
    ):
        got = call(X)
    assert (call.saved, call.loaded) == (1, 0)
    assert torch.equal(got, out)


def test_an_argument_it_cannot_key_is_compiled_in_the_process(
    compiled: tuple[Net, Path, torch.Tensor],
) -> None:
    """A call with an argument whose value cannot name a file warns once and runs compiled in
    the process, with the right result; calls it can key still load the saved code."""
    net, folder, out = compiled
    call = PrecompiledCall(net, folder)
    with pytest.warns(RuntimeWarning, match="compiled in the process"), torch.inference_mode():
        got = call(X, tag=object())
    torch.testing.assert_close(got, net(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            torch.testing.assert_close(call(X, tag=object()), net(X))
            assert torch.equal(call(X), out)
    assert (call.mode, call.loaded) == ("precompiled", 1)


def test_arguments_left_at_their_defaults_share_the_saved_code(
    compiled: tuple[Net, Path, torch.Tensor],
) -> None:
    """f(x, tag=None) is the same call as f(x): it loads the code saved for f(x) instead of
    compiling again (the pipeline and a direct call pass optional arguments differently)."""
    net, folder, out = compiled
    call = PrecompiledCall(net, folder)
    with torch.inference_mode():
        assert torch.equal(call(X, tag=None), out)
    assert (call.saved, call.loaded) == (0, 1)


@pytest.mark.parametrize(
    "other",
    [
        torch.zeros(2, 9),
        torch.zeros(2, 8, dtype=torch.float64),
        torch.zeros(8, 2).t(),
        torch.zeros(2, 8, requires_grad=True),
    ],
)
def test_inputs_that_compile_differently_are_keyed_apart(other: torch.Tensor) -> None:
    """Shape, dtype, memory layout and requires_grad each change the key (and so the file)."""
    assert signature(other) != signature(torch.zeros(2, 8))


def test_a_forward_wrapped_for_cuda_graphs_is_still_saved(tmp_path: Path) -> None:
    """With the CUDA graph recorder installed as the module's forward (as FastPolicy does on
    GPUs), the module can be pickled while the code is saved (the wrapper's lock is set
    aside), and the compiled code is saved and loaded."""
    from inferkit._cuda_graphs import GraphedCall

    wrapped = Net()
    wrapped.forward = GraphedCall(wrapped.forward)  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(wrapped)
    with _without_instance_forward(wrapped):
        pickle.dumps(wrapped)
    assert isinstance(wrapped.forward, GraphedCall)

    net = Net()
    call = PrecompiledCall(net, tmp_path)
    net.forward = GraphedCall(call)  # type: ignore[method-assign]
    with torch.inference_mode():
        out = net(X)
    assert (call.saved, call.loaded) == (1, 0)
    again = PrecompiledCall(Net(), tmp_path)
    with torch.inference_mode():
        assert torch.equal(again(X), out)
    assert again.loaded == 1


def test_a_changed_setting_that_is_not_a_tensor_compiles_anew(
    compiled: tuple[Net, Path, torch.Tensor],
) -> None:
    """A module whose non-tensor settings differ (here a submodule left in training mode)
    does not pick up code saved for the other settings."""
    _, folder, _ = compiled
    net = Net()
    net.lin.train(False)
    call = PrecompiledCall(net, folder)
    assert call._path(("key",)) != PrecompiledCall(Net(), folder)._path(("key",))

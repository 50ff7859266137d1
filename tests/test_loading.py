"""Model.load: diffusers folders, hub repo ids from the local cache, offline promises, registry."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import inferkit
import inferkit.testing
from inferkit.loaders import hub as hub_module


@pytest.mark.parametrize(
    ("arch", "prediction", "scheduler"),
    [("sd1", "epsilon", "pndm"), ("sd2", "v_prediction", "ddim"), ("sdxl", "epsilon", "euler")],
)
def test_folder_loads_and_reports_what_it_is(
    tiny_paths: dict[str, Path], arch: str, prediction: str, scheduler: str
) -> None:
    """A diffusers folder of each family loads and its info says what it is and why."""
    with inferkit.Model.load(tiny_paths[arch], device="cpu") as model:
        info = model.info
    assert info.architecture == arch
    assert info.prediction_type == prediction
    assert info.default_scheduler == scheduler
    assert info.loader == "diffusers-folder"
    assert info.dtype == "float32" and info.device == "cpu"
    assert info.parameters > 100_000
    assert len(info.hash) == 10 and info.sha256.startswith(info.hash)
    assert any(arch in line for line in info.evidence)
    assert {"unet", "vae", "text_encoder", "tokenizer"} <= set(info.components)


def test_load_reports_its_time_to_ready_by_stage(sd1_path: Path) -> None:
    """model.info.load_timings splits the load into stages that add up to its total, which
    is within the wall time around Model.load; as_dict carries it."""
    t0 = time.perf_counter()
    model = inferkit.Model.load(sd1_path, device="cpu")
    wall = time.perf_counter() - t0
    t = model.info.load_timings
    assert t is not None
    stages = (t.prepare, t.read, t.build, t.place)
    assert all(s >= 0 for s in stages)
    assert t.read > 0
    assert sum(stages) == pytest.approx(t.total, abs=1e-3)
    assert t.total <= wall
    assert model.info.as_dict()["load_timings"]["total"] == t.total


def test_hash_depends_on_weights_not_on_location(tmp_path: Path, sd1_path: Path) -> None:
    """The content hash is the same for a moved copy and differs for other weights."""
    copy = shutil.copytree(sd1_path, tmp_path / "copy")
    other = inferkit.testing.write_tiny_model(tmp_path / "other", "sd1", seed=1)
    a = inferkit.Model.load(sd1_path).info.sha256
    assert inferkit.Model.load(copy).info.sha256 == a
    assert inferkit.Model.load(other).info.sha256 != a


def test_dtype_is_applied_when_loading(sd1_path: Path) -> None:
    """dtype='bfloat16' loads the networks in bfloat16 and records it."""
    with inferkit.Model.load(sd1_path, device="cpu", dtype="bfloat16") as model:
        assert model.pipeline.unet.dtype == torch.bfloat16
        assert model.info.dtype == "bfloat16"
        result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert result.params.dtype == "bfloat16"


def test_default_scheduler_can_be_chosen_at_load(sd1_path: Path) -> None:
    """Model.load(scheduler=...) sets the sampler used when a call names none."""
    model = inferkit.Model.load(sd1_path, scheduler="Euler a")
    assert model.infer("x", steps=2, seed=0, progress=False).params.scheduler == "euler_a"


def test_missing_path_is_a_model_not_found_error(tmp_path: Path) -> None:
    """A path that does not exist raises ModelNotFoundError (a FileNotFoundError) naming it."""
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        inferkit.Model.load(missing)
    assert isinstance(e.value, inferkit.ModelNotFoundError)
    assert str(missing) in str(e.value)


def test_folder_without_model_index_is_unsupported(tmp_path: Path) -> None:
    """An existing folder that is not a diffusers model is refused with a hint."""
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(inferkit.UnsupportedModelError) as e:
        inferkit.Model.load(tmp_path)
    assert "model_index.json" in str(e.value)


def test_unknown_pipeline_class_is_unsupported(tmp_path: Path, sd1_path: Path) -> None:
    """A folder for another pipeline class is refused, naming the class."""
    copy = shutil.copytree(sd1_path, tmp_path / "m")
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(inferkit.UnsupportedModelError, match="FluxPipeline"):
        inferkit.Model.load(copy)


def test_component_class_outside_the_allow_list_is_refused(tmp_path: Path, sd1_path: Path) -> None:
    """model_index.json cannot make inferkit instantiate arbitrary classes."""
    copy = shutil.copytree(sd1_path, tmp_path / "m")
    index = json.loads((copy / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "AutoModel"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(inferkit.UnsupportedModelError, match="AutoModel"):
        inferkit.Model.load(copy)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"device": "tpu"}, "device"),
        ({"dtype": "float8"}, "dtype"),
        ({"scheduler": "nope"}, "scheduler"),
        ({"revision": ""}, "revision"),
        ({"local_files_only": "yes"}, "local_files_only"),
    ],
)
def test_bad_load_arguments_name_the_argument(
    sd1_path: Path, kwargs: dict[str, object], name: str
) -> None:
    """Invalid load arguments raise InvalidParameterError naming them, before any loading."""
    with pytest.raises(inferkit.InvalidParameterError) as e:
        inferkit.Model.load(sd1_path, **kwargs)  # type: ignore[arg-type]
    assert e.value.name == name


def test_cuda_request_without_cuda_is_a_device_error(sd1_path: Path) -> None:
    """Asking for CUDA on a machine without it raises DeviceUnavailableError with the fix."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(inferkit.DeviceUnavailableError, match="device='cpu'"):
        inferkit.Model.load(sd1_path, device="cuda")


# --- hub cache ---------------------------------------------------------------------------


def test_repo_id_loads_from_the_hub_cache_offline(
    hub_cache: Path, tiny_paths: dict[str, Path], no_network: list[object]
) -> None:
    """A repo id resolves through the hub cache layout, with no network attempt."""
    inferkit.testing.write_hub_cache_entry(tiny_paths["sdxl"], "acme/tiny-xl", hub_cache)
    with inferkit.Model.load("acme/tiny-xl") as model:
        info = model.info
        result = model.infer("a cat", steps=2, seed=1, progress=False)
    assert info.loader == "hub-cache" and info.architecture == "sdxl" and info.name == "tiny-xl"
    assert result.images[0].image.size == (64, 64)
    assert no_network == []


def test_hub_hash_comes_from_blob_names(hub_cache: Path, sd1_path: Path) -> None:
    """Weights in the hub cache hash the same as the same folder on disk."""
    inferkit.testing.write_hub_cache_entry(sd1_path, "acme/tiny", hub_cache)
    assert inferkit.Model.load("acme/tiny").info.sha256 == inferkit.Model.load(sd1_path).info.sha256


def test_revision_pins_a_snapshot(hub_cache: Path, tiny_paths: dict[str, Path]) -> None:
    """revision= picks the snapshot a branch points to; main stays on its own."""
    inferkit.testing.write_hub_cache_entry(tiny_paths["sd1"], "acme/m", hub_cache)
    inferkit.testing.write_hub_cache_entry(tiny_paths["sd2"], "acme/m", hub_cache, revision="v2")
    assert inferkit.Model.load("acme/m").info.architecture == "sd1"
    assert inferkit.Model.load("acme/m", revision="v2").info.architecture == "sd2"


def test_commit_hash_revision_is_accepted(hub_cache: Path, sd1_path: Path) -> None:
    """A full commit id as revision loads that snapshot."""
    snap = inferkit.testing.write_hub_cache_entry(sd1_path, "acme/m", hub_cache)
    assert inferkit.Model.load("acme/m", revision=snap.name).info.architecture == "sd1"


def test_uncached_repo_offline_fails_at_once(hub_cache: Path, no_network: list[object]) -> None:
    """With HF_HUB_OFFLINE=1 a repo missing from the cache raises OfflineError fast, no network."""
    start = time.perf_counter()
    with pytest.raises(inferkit.OfflineError) as e:
        inferkit.Model.load("acme/not-cached")
    assert time.perf_counter() - start < 5
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ConnectionError)
    assert "HF_HUB_OFFLINE" in str(e.value) and "acme/not-cached" in str(e.value)
    assert no_network == []


def test_local_files_only_is_honoured_when_online(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    """local_files_only=True never downloads, even with HF_HUB_OFFLINE unset."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(inferkit.OfflineError, match="local_files_only=True"):
        inferkit.Model.load("acme/not-cached", local_files_only=True)
    assert no_network == []


def test_unknown_revision_offline_fails(hub_cache: Path, sd1_path: Path) -> None:
    """A revision the cache does not have is an OfflineError naming the revision."""
    inferkit.testing.write_hub_cache_entry(sd1_path, "acme/m", hub_cache)
    with pytest.raises(inferkit.OfflineError, match="v9"):
        inferkit.Model.load("acme/m", revision="v9")


def test_offline_flag_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE set after import still counts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_module.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_module.hub_offline()


# --- the loader registry -------------------------------------------------------------------


class PrefixLoader:
    """A user loader: 'tiny:ARCH' makes a tiny model on the fly."""

    name = "test-prefix"

    def __init__(self, root: Path) -> None:
        self.root = root

    def accepts(self, source: str, options: inferkit.LoadOptions) -> bool:
        return source.startswith("tiny:")

    def load(self, source: str, options: inferkit.LoadOptions) -> inferkit.Components:
        from inferkit.loaders.folder import FolderLoader

        arch = source.split(":", 1)[1]
        path = inferkit.testing.write_tiny_model(self.root / arch, arch)
        parts = FolderLoader().load(str(path), options)
        import attrs

        return attrs.evolve(parts, loader=self.name, source=source)


def test_users_can_register_a_loader(tmp_path: Path) -> None:
    """A registered loader that accepts a source is used for it."""
    inferkit.register_loader(PrefixLoader(tmp_path), first=True)
    try:
        model = inferkit.Model.load("tiny:sd2")
        assert model.info.loader == "test-prefix" and model.info.architecture == "sd2"
    finally:
        inferkit.unregister_loader("test-prefix")
    assert "test-prefix" not in [loader.name for loader in inferkit.registered_loaders()]


def test_first_accepting_loader_wins(tmp_path: Path, sd1_path: Path) -> None:
    """Loaders are tried in order; one registered first takes precedence."""

    class Grabby(PrefixLoader):
        name = "test-grabby"

        def accepts(self, source: str, options: inferkit.LoadOptions) -> bool:
            return True

        def load(self, source: str, options: inferkit.LoadOptions) -> inferkit.Components:
            raise inferkit.UnsupportedModelError("grabbed", source=source)

    inferkit.register_loader(Grabby(tmp_path))  # last: folder loader still wins
    try:
        assert inferkit.Model.load(sd1_path).info.loader == "diffusers-folder"
        inferkit.register_loader(Grabby(tmp_path), first=True)  # same name: replaced in place
        assert inferkit.Model.load(sd1_path).info.loader == "diffusers-folder"
        inferkit.unregister_loader("test-grabby")
        inferkit.register_loader(Grabby(tmp_path), first=True)
        with pytest.raises(inferkit.UnsupportedModelError, match="grabbed"):
            inferkit.Model.load(sd1_path)
    finally:
        inferkit.unregister_loader("test-grabby")


def test_register_loader_rejects_non_loaders() -> None:
    """Objects without name/accepts/load are refused."""
    with pytest.raises(inferkit.InvalidParameterError):
        inferkit.register_loader(object())  # type: ignore[arg-type]

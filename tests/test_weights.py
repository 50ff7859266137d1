"""Reading weights: the one-pass device copy, the deterministic writer, and diffusers folders
whose weights do not fit their config or whose shards are damaged or hostile."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import inferkit
from inferkit.safetensors_io import SafetensorsFile, write_file

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8]


def _tensors(data: st.DataObject) -> dict[str, torch.Tensor]:
    count = data.draw(st.integers(1, 6))
    out = {}
    for i in range(count):
        dtype = data.draw(st.sampled_from(_DTYPES))
        shape = data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
        out[f"t{i}"] = (torch.arange(int(torch.tensor(shape).prod()) if shape else 1) % 7).to(
            dtype
        ).reshape(shape) + (i if dtype.is_floating_point else 0)
    return out


@given(data=st.data())
def test_one_pass_device_copy_returns_what_plain_reads_return(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """read_to_device gives every requested tensor exactly as read() does, for any subset of a
    file's tensors, any chunk size and any number of threads (here on the CPU)."""
    tensors = _tensors(data)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_file(tensors, str(path))
    names = data.draw(st.lists(st.sampled_from(sorted(tensors)), unique=True, min_size=1))
    chunk = data.draw(st.integers(1, 64))
    threads = data.draw(st.integers(1, 4))
    with SafetensorsFile(path) as f:
        got = f.read_to_device(names, "cpu", chunk_bytes=chunk, threads=threads)
        assert sorted(got) == sorted(names)
        for name in names:
            assert got[name].dtype == tensors[name].dtype
            assert torch.equal(got[name], f.read(name))


@given(data=st.data())
def test_written_files_are_byte_identical_and_readable_by_safetensors(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """write_file's bytes depend only on its inputs, and safetensors itself reads them back."""
    tensors = _tensors(data)
    metadata = data.draw(st.dictionaries(st.text("abcxyz", min_size=1), st.text(), max_size=4))
    folder = tmp_path_factory.mktemp("out")
    write_file(folder / "a.safetensors", tensors, metadata)
    reordered = dict(reversed(list(tensors.items())))
    write_file(folder / "b.safetensors", reordered, dict(reversed(list(metadata.items()))))
    a, b = ((folder / n).read_bytes() for n in ("a.safetensors", "b.safetensors"))
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    back = load_file(str(folder / "a.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


# --- diffusers folders whose weights do not fit -------------------------------------------------


def _copy(sd1_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sd1_path, tmp_path / "model"))


def _edit_unet(folder: Path, edit: object) -> None:
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)  # type: ignore[operator]
    save_file(tensors, str(path))


def test_folder_with_a_missing_weight_is_refused_by_name(sd1_path: Path, tmp_path: Path) -> None:
    """A weight missing from a folder is an error naming it, never a random initialisation."""
    folder = _copy(sd1_path, tmp_path)
    _edit_unet(folder, lambda t: t.pop("conv_in.weight"))
    with pytest.raises(inferkit.UnsupportedModelError, match=r"lacks 1 weights.*conv_in\.weight"):
        inferkit.Model.load(folder)


def test_folder_with_an_unexpected_weight_is_refused_by_name(
    sd1_path: Path, tmp_path: Path
) -> None:
    """A tensor the network does not have means the weights do not match config.json."""
    folder = _copy(sd1_path, tmp_path)
    _edit_unet(folder, lambda t: t.update({"extra.layer.weight": torch.ones(2)}))
    with pytest.raises(inferkit.UnsupportedModelError, match=r"does not have: extra\.layer"):
        inferkit.Model.load(folder)


def test_folder_with_a_wrongly_shaped_weight_is_refused(sd1_path: Path, tmp_path: Path) -> None:
    """A weight of the wrong shape names the weight, its shape and the shape needed."""
    folder = _copy(sd1_path, tmp_path)
    _edit_unet(folder, lambda t: t.update({"conv_in.bias": torch.ones(7)}))
    with pytest.raises(inferkit.UnsupportedModelError, match=r"conv_in\.bias \(7,\) \(needs"):
        inferkit.Model.load(folder)


def test_old_vae_attention_names_still_load(sd1_path: Path, tmp_path: Path) -> None:
    """VAEs exported with the older query/key/value/proj_attn names load to the same pixels."""
    folder = _copy(sd1_path, tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    old = {}
    for key, value in tensors.items():
        for new, was in renames.items():
            key = key.replace(new, was)
        old[key] = value
    assert old.keys() != tensors.keys()
    save_file(old, str(path))
    a = inferkit.Model.load(sd1_path).infer("a cat", steps=2, seed=1, progress=False)
    b = inferkit.Model.load(folder).infer("a cat", steps=2, seed=1, progress=False)
    assert a.images[0].image.tobytes() == b.images[0].image.tobytes()


# --- sharded folders ----------------------------------------------------------------------------


def _shard(folder: Path) -> tuple[Path, dict[str, str]]:
    """Split the UNet's weights into two shards with an index; return the index and its map."""
    unet = folder / "unet"
    tensors = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"diffusion_pytorch_model-0000{i}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(unet / shard))
        weight_map |= {n: shard for n in part}
    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index, weight_map


def test_sharded_folder_loads_the_same_model(sd1_path: Path, tmp_path: Path) -> None:
    """A UNet split into shards with an index gives the same pixels, and the hash covers the
    shards and the index."""
    folder = _copy(sd1_path, tmp_path)
    _shard(folder)
    model = inferkit.Model.load(folder)
    a = inferkit.Model.load(sd1_path).infer("a cat", steps=2, seed=1, progress=False)
    b = model.infer("a cat", steps=2, seed=1, progress=False)
    assert a.images[0].image.tobytes() == b.images[0].image.tobytes()
    names = {p.name for p in model._components.files}
    assert "diffusion_pytorch_model-00002-of-00002.safetensors" in names
    assert "diffusion_pytorch_model.safetensors.index.json" in names


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ("../../escape.safetensors", "not a plain .safetensors file name"),
        ("/etc/passwd.safetensors", "not a plain .safetensors file name"),
        ("\\\\server\\share\\w.safetensors", "not a plain .safetensors file name"),
        ("C:\\weights\\w.safetensors", "not a plain .safetensors file name"),
        ("sub/w.safetensors", "not a plain .safetensors file name"),
        ("w.bin", "not a plain .safetensors file name"),
        ("diffusion_pytorch_model-00009-of-00009.safetensors", "missing from"),
    ],
)
def test_index_naming_a_bad_shard_is_refused(
    sd1_path: Path, tmp_path: Path, shard: str, message: str
) -> None:
    """Shards are read only from the index's own folder, by plain name, and must all exist."""
    folder = _copy(sd1_path, tmp_path)
    index, weight_map = _shard(folder)
    weight_map[next(iter(weight_map))] = shard
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(inferkit.UnsupportedModelError, match=message):
        inferkit.Model.load(folder)


def test_tensor_in_two_shards_is_refused(sd1_path: Path, tmp_path: Path) -> None:
    """Two shards holding the same tensor are ambiguous, so the folder is refused."""
    folder = _copy(sd1_path, tmp_path)
    _, weight_map = _shard(folder)
    first, second = sorted(set(weight_map.values()))
    stolen = next(n for n, s in weight_map.items() if s == first)
    path = folder / "unet" / second
    tensors = load_file(str(path))
    tensors[stolen] = torch.zeros(1)
    save_file(tensors, str(path))
    with pytest.raises(inferkit.UnsupportedModelError, match="stored twice"):
        inferkit.Model.load(folder)


def test_index_that_disagrees_with_its_shards_is_refused(sd1_path: Path, tmp_path: Path) -> None:
    """The index must say where each tensor really is."""
    folder = _copy(sd1_path, tmp_path)
    index, weight_map = _shard(folder)
    first, second = sorted(set(weight_map.values()))
    name = next(n for n, s in weight_map.items() if s == first)
    weight_map[name] = second
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(inferkit.UnsupportedModelError, match="do not match"):
        inferkit.Model.load(folder)


def test_index_with_a_duplicated_key_is_refused(sd1_path: Path, tmp_path: Path) -> None:
    """JSON that lists a tensor twice is a damaged index, not last-one-wins."""
    folder = _copy(sd1_path, tmp_path)
    index, weight_map = _shard(folder)
    name, shard = next(iter(weight_map.items()))
    body = json.dumps({"weight_map": weight_map})
    index.write_text(body.replace("{", "{" + json.dumps(name) + ": " + json.dumps(shard) + ", ", 2))
    with pytest.raises(inferkit.UnsupportedModelError, match="twice"):
        inferkit.Model.load(folder)


def test_folder_with_only_pickle_weights_says_so(sd1_path: Path, tmp_path: Path) -> None:
    """A component with .bin weights only is refused with the reason, not loaded by pickle."""
    folder = _copy(sd1_path, tmp_path)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.bin")
    with pytest.raises(inferkit.UnsupportedModelError, match="only pickle weights"):
        inferkit.Model.load(folder)


def test_grouped_device_reads_match_plain_reads(
    monkeypatch: pytest.MonkeyPatch, sd1_path: Path
) -> None:
    """The grouped copy that GPU loads use (here forced on the CPU, with groups of a few KB)
    gives every tensor exactly as a plain read does, converted to the target dtype."""
    from inferkit.loaders import weights

    monkeypatch.setattr(weights, "GROUP_BYTES", 4096)
    with weights.open_weights(sd1_path / "unet", "diffusion_pytorch_model", "t") as f:
        names = sorted(f.tensors, key=lambda n: f.tensors[n].start)
        grouped = weights._read_all(f, names, torch.bfloat16, "cpu", grouped=True)
        plain = weights._read_all(f, names, torch.bfloat16, "cpu", grouped=False)
    assert grouped.keys() == plain.keys()
    assert all(
        grouped[n].dtype == torch.bfloat16 and torch.equal(grouped[n], plain[n]) for n in names
    )

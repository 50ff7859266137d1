"""LoRA adapters: read the common file layouts, match them to a model's layers, merge them.

Layouts read (told apart by key names):

- **kohya** (sd-scripts, AUTOMATIC1111, ComfyUI): ``lora_unet_<module>``, ``lora_te_`` (or
  ``lora_te1_``/``lora_te2_`` for SDXL) with ``.lora_down``/``.lora_up``/``.alpha``; module
  names in diffusers' or the original (``input_blocks_4_1_...``) UNet naming.
- **diffusers / PEFT**: ``unet.<module>.lora_A.weight``/``lora_B.weight`` (also
  ``lora.down``/``lora.up`` and the older ``processor.to_q_lora`` names), ``text_encoder.``,
  ``text_encoder_2.``, and PEFT's ``base_model.model.`` prefix.
- **LyCORIS**: LoCon (kohya keys on convolutions too), LoHa (``hada_w1_a``...) and LoKr
  (``lokr_w1``...); DoRA and Tucker-decomposed variants are refused with an explanation.

Adapters are merged into the weights, so a model with adapters runs as fast as without; each
merged weight's original is kept (on the CPU) and copied back when the adapters change, so
removing them restores the base weights bit for bit.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from inferkit.errors import InvalidParameterError, LoraError
from inferkit.fp8 import Fp8Linear

__all__ = ["LoraAdapter", "LoraInfo", "LoraPatcher", "read_lora", "target_layers"]

# A suffix of a tensor name, and the role that tensor plays.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),  # diffusers' attention processors: processor.to_q_lora
    ("_lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),  # diffusers' older text encoder layers
    (".lora_linear_layer.up.weight", "up"),
    (".hada_w1_a", "w1a"),
    (".hada_w1_b", "w1b"),
    (".hada_w2_a", "w2a"),
    (".hada_w2_b", "w2b"),
    (".hada_t1", "t1"),
    (".hada_t2", "t2"),
    (".lokr_w1", "k1"),
    (".lokr_w1_a", "k1a"),
    (".lokr_w1_b", "k1b"),
    (".lokr_w2", "k2"),
    (".lokr_w2_a", "k2a"),
    (".lokr_w2_b", "k2b"),
    (".lokr_t2", "kt2"),
    (".dora_scale", "dora"),
    (".diff", "diff"),
    (".alpha", "alpha"),
)
_PEFT_NAMED = re.compile(r"^(.*)\.lora_([AB])\.[^.]+\.weight$")  # lora_A.<adapter>.weight
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
_KOHYA_PREFIXES["lora_te2_"] = "text_encoder_2"
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_serials = itertools.count()
_Layer = torch.nn.Linear | torch.nn.Conv2d | Fp8Linear


@attrs.frozen
class LoraInfo:
    """One adapter as applied: which file, how strongly, and what it touched.

    Attributes:
        name: the file's name without its extension (as AUTOMATIC1111 shows it).
        path: the file.
        sha256: the sha256 of the file.
        scale: the multiplier it was applied with (1.0 = as trained; negative inverts it).
        layout: ``"kohya"``, ``"peft"`` (diffusers) or ``"lycoris"`` (LoCon: LoRA on 3x3
            convolutions too; LoHa; LoKr).
        layers: how many of the model's layers it changes.
        unmatched: how many of its layers the model does not have (0 for a clean match).
        data_sha256: the sha256 of the file's tensor data (the bytes after the header), which
            AUTOMATIC1111 calls the "addnet" hash; it ignores edits to the metadata.

    Example:
        >>> info = LoraInfo("style", "style.safetensors", "ab" * 32, 0.8, "kohya", 192, 0,
        ...                 data_sha256="cd" * 32)
        >>> info.short_hash
        'cdcdcdcdcdcd'

    """

    name: str
    path: str
    sha256: str
    scale: float
    layout: str
    layers: int
    unmatched: int = 0
    data_sha256: str = ""

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of ``data_sha256``, as infotext's ``Lora hashes`` has them."""
        return self.data_sha256[:12]


@attrs.frozen(eq=False)
class _Patch:
    """The tensors of one adapted layer, by role, and its target ``(component, module)``."""

    component: str
    module: str
    key: str
    tensors: Mapping[str, torch.Tensor]


@attrs.frozen(eq=False)
class LoraAdapter:
    """A LoRA file read into memory and matched to one model's layers.

    Build one with :func:`read_lora`; :meth:`inferkit.Model.with_lora` does it for you.
    """

    info: LoraInfo
    patches: tuple[_Patch, ...]
    serial: int = attrs.field(factory=lambda: next(_serials))

    def delta(self, patch: _Patch, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """Return ``patch``'s weight change for a weight of ``shape``, in float32, unscaled."""
        try:
            delta = _delta(patch.tensors, device)
        except RuntimeError as e:  # inconsistent ranks inside one layer's tensors
            raise LoraError(
                f"{self.info.path}: the tensors of layer {patch.key!r} do not fit together "
                f"({e}); the file is damaged or in a layout inferkit misreads",
                path=self.info.path,
            ) from e
        if delta.shape != shape:
            if delta.numel() != math.prod(shape):
                raise LoraError(
                    f"{self.info.path}: layer {patch.key!r} changes a weight of shape "
                    f"{tuple(delta.shape)}, but this model's {patch.component}.{patch.module} "
                    f"has shape {tuple(shape)}: the LoRA was trained for another model family",
                    path=self.info.path,
                )
            delta = delta.reshape(shape)  # 1x1 convolutions stored for linear layers, or back
        return delta


def _delta(t: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    def get(role: str) -> torch.Tensor:
        return t[role].to(device=device, dtype=torch.float32)

    alpha = float(t["alpha"].float().item()) if "alpha" in t else None
    if "diff" in t:
        return get("diff")
    if "up" in t:
        up, down = get("up"), get("down")
        rank = down.shape[0]
        weight = up.flatten(1) @ down.flatten(1)
        if down.ndim == 4:
            weight = weight.reshape(up.shape[0], *down.shape[1:])
        return weight * (alpha / rank if alpha is not None else 1.0)
    if "w1a" in t:
        w1 = get("w1a") @ get("w1b")
        w2 = get("w2a") @ get("w2b")
        rank = t["w1b"].shape[0]
        return w1 * w2 * (alpha / rank if alpha is not None else 1.0)
    w1 = get("k1") if "k1" in t else get("k1a") @ get("k1b")
    if "k2" in t:
        w2 = get("k2")
    else:
        b = get("k2b")
        w2 = (get("k2a") @ b.flatten(1)).reshape(t["k2a"].shape[0], *b.shape[1:])
    factored = t.get("k2a", t.get("k1a"))
    scale = alpha / factored.shape[1] if alpha is not None and factored is not None else 1.0
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2) * scale


def target_layers(modules: Mapping[str, Any]) -> dict[str, dict[str, _Layer]]:
    """Return the layers an adapter may change: linear and convolution layers, by component."""
    found: dict[str, dict[str, _Layer]] = {}
    for component in _COMPONENTS:
        module = modules.get(component)
        if isinstance(module, torch.nn.Module):
            found[component] = {
                name: layer
                for name, layer in module.named_modules()
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, Fp8Linear))
            }
    return found


def _lookup(
    layers: Mapping[str, Mapping[str, _Layer]], unet_config: Any
) -> dict[str, tuple[str, str]]:
    """Map every name a layer may have in a LoRA file to ``(component, module name)``."""
    from inferkit.loaders.ldm_layout import UNET_PREFIX, unet_key

    table: dict[str, tuple[str, str]] = {}
    for component, names in layers.items():
        kohya = {"unet": ["lora_unet_"], "text_encoder": ["lora_te_", "lora_te1_"]}.get(
            component, ["lora_te2_"]
        )
        for name in names:
            target = (component, name)
            for alias in _aliases(component, name):
                table[f"{component}.{alias}"] = target
                for prefix in kohya:
                    table[prefix + alias.replace(".", "_")] = target
        if component == "unet" and unet_config is not None:
            up_attention = [t.startswith("CrossAttn") for t in unet_config.up_block_types]
            lpb = unet_config.layers_per_block
            if not isinstance(lpb, int):
                continue  # per-level depths: no original naming to derive
            for name in names:
                try:
                    original = unet_key(f"{name}.weight", lpb, up_attention)
                except KeyError:
                    continue
                short = original.removeprefix(UNET_PREFIX).removesuffix(".weight")
                table["lora_unet_" + short.replace(".", "_")] = (component, name)
    return table


def _aliases(component: str, name: str) -> tuple[str, ...]:
    """Names a layer has in files: text encoders with and without ``text_model.``.

    LoRA files name CLIP layers ``text_model.encoder...``; transformers 5's ``CLIPTextModel``
    dropped that level (``encoder...``) while ``CLIPTextModelWithProjection`` kept it.
    """
    if component == "unet":
        return (name,)
    if name.startswith("text_model."):
        return name, name.removeprefix("text_model.")
    return name, "text_model." + name


def _split(key: str) -> tuple[str, str] | None:
    """Return ``(layer name, role)`` of a tensor name, or None for names of no known role."""
    if m := _PEFT_NAMED.match(key):
        return m[1], "down" if m[2] == "A" else "up"
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _normalise(layer: str) -> str:
    """Bring diffusers/PEFT layer names to ``component.module`` form."""
    layer = layer.removeprefix("base_model.model.")
    if layer.startswith("text_model."):
        layer = "text_encoder." + layer  # PEFT adapters of a CLIP text encoder alone
    if m := _OLD_PROCESSOR.search(layer):
        target = "to_out.0" if m[1] == "to_out" else m[1]
        layer = layer[: m.start()] + "." + target
    if layer.startswith("lora_"):
        return layer
    if not layer.startswith(tuple(f"{c}." for c in _COMPONENTS)):
        layer = "unet." + layer  # unprefixed diffusers files adapt the UNet
    return layer


def _layout(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    roles = {role for tensors in groups.values() for role in tensors}
    if roles & {"w1a", "k1", "k1a"}:
        return "lycoris"
    if all(layer.startswith("lora_") for layer in groups):
        convs = any(
            t["down"].ndim == 4 and t["down"].shape[2] > 1 for t in groups.values() if "down" in t
        )
        return "lycoris" if convs else "kohya"
    return "peft"


def read_lora(
    path: str | os.PathLike[str],
    modules: Mapping[str, Any],
    scale: float = 1.0,
    *,
    strict: bool = False,
) -> LoraAdapter:
    """Read the LoRA file at ``path`` and match it to the layers of ``modules``.

    Args:
        path: a ``.safetensors`` LoRA file, or ``"inferkit:NAME"`` for a packaged one.
        modules: the model's modules by component name (``unet``, ``text_encoder``, ...).
        scale: the multiplier to apply it with.
        strict: a layer the model does not have is an error (default: it is counted in
            ``info.unmatched`` and reported as a warning with each result).

    Raises:
        LoraError: the file matches none of the model's layers, fits them with the wrong
            shapes, or is of a kind inferkit cannot merge.
        ModelNotFoundError: no such file.
        UnsupportedModelError: the file is not safetensors (pickled LoRAs are not read).

    """
    from inferkit.safetensors_io import SafetensorsFile

    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError("lora", path, "must be a path to a .safetensors LoRA file")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InvalidParameterError("scale", scale, "must be a finite number (1.0 = as trained)")
    if isinstance(path, str) and path.startswith("inferkit:"):
        from inferkit.zoo import zoo_lora_path

        path = zoo_lora_path(path.removeprefix("inferkit:"))
    file = Path(path).expanduser()
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    with SafetensorsFile(file) as f:
        for key in f.tensors:
            split = _split(key)
            if split is None:
                unknown.append(key)
                continue
            layer, role = split
            groups.setdefault(_normalise(layer), {})[role] = f.read(key).clone()
    where = str(file)
    if not groups:
        shown = ", ".join(unknown[:3]) or "none"
        raise LoraError(
            f"{where} holds no LoRA weights inferkit knows (tensor names such as {shown}); "
            "expected kohya (lora_unet_..., .lora_down/.lora_up), diffusers/PEFT (.lora_A/"
            ".lora_B) or LyCORIS (.hada_*, .lokr_*) names",
            path=where,
        )
    _refuse_unsupported(groups, where)
    layers = target_layers(modules)
    unet = modules.get("unet")
    table = _lookup(layers, getattr(unet, "config", None))
    patches: list[_Patch] = []
    missing: list[str] = []
    for layer, tensors in groups.items():
        if set(tensors) == {"alpha"}:
            continue  # an alpha whose layer has no weights (some trainers write these)
        found = table.get(layer)
        if found is None:
            missing.append(layer)
            continue
        _check_complete(tensors, layer, where)
        patches.append(_Patch(found[0], found[1], layer, tensors))
    if not patches:
        raise LoraError(
            f"{where} matches none of this model's layers ({len(missing)} layers such as "
            f"{missing[0]!r}); {_family_hint(groups, layers)}",
            path=where,
        )
    if missing and strict:
        raise LoraError(
            f"{where}: {len(missing)} of its layers are not in this model (such as "
            f"{', '.join(repr(m) for m in missing[:3])}); pass strict=False to apply the "
            f"{len(patches)} that match",
            path=where,
        )
    sha256, data_sha256 = _sha256s(file)
    info = LoraInfo(
        name=file.name.removesuffix(".safetensors"),
        path=where,
        sha256=sha256,
        data_sha256=data_sha256,
        scale=float(scale),
        layout=_layout(groups),
        layers=len(patches),
        unmatched=len(missing),
    )
    adapter = LoraAdapter(info, tuple(patches))
    for patch in adapter.patches:  # shapes are checked now (on meta: no arithmetic)
        weight = layers[patch.component][patch.module].weight
        adapter.delta(patch, weight.shape, torch.device("meta"))
    return adapter


def _sha256s(file: Path) -> tuple[str, str]:
    """Return the sha256 of a file and of its bytes after the header, in one read."""
    import hashlib

    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(file, "rb") as fh:
        prefix = fh.read(8)
        (length,) = struct.unpack("<Q", prefix)
        whole.update(prefix)
        whole.update(fh.read(length))
        for block in iter(lambda: fh.read(1 << 20), b""):
            whole.update(block)
            data.update(block)
    return whole.hexdigest(), data.hexdigest()


def _refuse_unsupported(groups: Mapping[str, Mapping[str, torch.Tensor]], where: str) -> None:
    for layer, tensors in groups.items():
        why = None
        if "dora" in tensors:
            why = "DoRA (weight-decomposed) layers, which need the base weight's norms"
        elif {"mid", "t1", "t2", "kt2"} & set(tensors):
            why = "Tucker-decomposed convolution layers (lora_mid / hada_t / lokr_t2)"
        if why:
            raise LoraError(
                f"{where} has {why}, such as {layer!r}; inferkit cannot merge these yet: use "
                "a plain LoRA, LoCon, LoHa or LoKr file",
                path=where,
            )


_NEEDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("diff", frozenset({"diff"})),
    ("up", frozenset({"up", "down"})),
    ("down", frozenset({"up", "down"})),
    ("w1a", frozenset({"w1a", "w1b", "w2a", "w2b"})),
)


def _check_complete(tensors: Mapping[str, torch.Tensor], layer: str, where: str) -> None:
    roles = set(tensors) - {"alpha"}
    needed = next((need for role, need in _NEEDS if role in roles), None)
    if needed is None:
        first = "k1" if "k1" in roles else "k1a"
        second = "k2" if "k2" in roles else "k2a"
        needed = frozenset(
            {first, second}
            | ({"k1b"} if first == "k1a" else set())
            | ({"k2b"} if second == "k2a" else set())
        )
    if not needed <= roles:
        raise LoraError(
            f"{where}: layer {layer!r} lacks {', '.join(sorted(needed - roles))} (it has "
            f"{', '.join(sorted(roles))}); the file is incomplete",
            path=where,
        )


def _family_hint(
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    layers: Mapping[str, Mapping[str, _Layer]],
) -> str:
    """Say which family the file seems to be for, from its cross-attention key widths."""
    widths = {
        int(t["down"].shape[1])
        for layer, t in groups.items()
        if ("attn2_to_k" in layer or "attn2.to_k" in layer) and "down" in t
    }
    have = {
        int(m.in_features)
        for name, m in layers.get("unet", {}).items()
        if name.endswith("attn2.to_k") and isinstance(m, (torch.nn.Linear, Fp8Linear))
    }
    if widths and have and not widths & have:
        return (
            f"its cross-attention layers take {sorted(widths)[0]}-wide text features and this "
            f"model's take {sorted(have)[0]}: it was trained for another model family "
            "(768: SD 1.x, 1024: SD 2.x, 2048: SDXL)"
        )
    return "is it a LoRA for another model family, or for another kind of network?"


@attrs.define
class LoraPatcher:
    """Merges a stack of adapters into shared modules, restoring the originals exactly.

    One patcher serves a model and all its LoRA views: :meth:`activate` makes the weights
    those of the given stack, touching only what differs from the stack active now.
    """

    backups: dict[tuple[str, str], tuple[torch.Tensor, ...]] = attrs.field(factory=dict)
    active: tuple[tuple[int, float], ...] | None = ()

    @staticmethod
    def _key(stack: Sequence[LoraAdapter]) -> tuple[tuple[int, float], ...]:
        return tuple((a.serial, a.info.scale) for a in stack)

    def is_active(self, stack: Sequence[LoraAdapter]) -> bool:
        """Whether the weights are now those of ``stack``."""
        return self._key(stack) == self.active

    def activate(self, modules: Mapping[str, Any], stack: Sequence[LoraAdapter]) -> None:
        """Make ``modules``' weights the base weights plus ``stack``'s deltas.

        If merging fails part way (out of memory, say), every weight is put back before the
        error is raised, so the model is never left half merged.
        """
        wanted = self._key(stack)
        if wanted == self.active:
            return
        layers = target_layers(modules)
        by_target: dict[tuple[str, str], list[tuple[LoraAdapter, _Patch]]] = {}
        for adapter in stack:
            for patch in adapter.patches:
                by_target.setdefault((patch.component, patch.module), []).append((adapter, patch))
        touched = set(self.backups) | set(by_target)
        self.active = None  # unknown until this call finishes
        with torch.no_grad():
            try:
                self._restore(layers)
                for target, patches in by_target.items():  # one layer's float32 delta at a time
                    layer = layers[target[0]][target[1]]
                    total = _float_weight(layer)
                    for adapter, patch in patches:
                        delta = adapter.delta(patch, layer.weight.shape, layer.weight.device)
                        total.add_(delta, alpha=adapter.info.scale)
                    self.backups[target] = _snapshot(layer)
                    _store_weight(layer, total)
            except BaseException:
                self._restore(layers)
                _refresh_fused(modules, touched)
                self.active = ()
                raise
            _refresh_fused(modules, touched)
        self.active = wanted

    def _restore(self, layers: Mapping[str, Mapping[str, _Layer]]) -> None:
        for (component, module), saved in self.backups.items():
            layer = layers[component][module]
            for tensor, original in zip(_stored(layer), saved, strict=True):
                tensor.copy_(original)
        self.backups.clear()


def _stored(layer: _Layer) -> tuple[torch.Tensor, ...]:
    """Return the tensors that hold a layer's weight (an fp8 layer's scales too)."""
    if isinstance(layer, Fp8Linear):
        return (layer.weight, layer.weight_scale)
    return (layer.weight,)


def _snapshot(layer: _Layer) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().to("cpu", copy=True) for t in _stored(layer))


def _float_weight(layer: _Layer) -> torch.Tensor:
    """Return a float32 copy (never a view) of the weight the layer stands for."""
    if isinstance(layer, Fp8Linear):
        return layer.dequantize()
    return layer.weight.detach().to(torch.float32, copy=True)


def _store_weight(layer: _Layer, weight: torch.Tensor) -> None:
    """Write ``weight`` into the layer's own storage (an fp8 layer quantizes it again)."""
    if isinstance(layer, Fp8Linear):
        layer.store_(weight)
    else:
        layer.weight.copy_(weight.to(layer.weight.dtype))


def _refresh_fused(modules: Mapping[str, Any], touched: set[tuple[str, str]]) -> None:
    """Copy q/k/v weights into fused projections (``fuse_qkv_projections``) that hold copies.

    diffusers' fused attention reads ``to_qkv`` (self-attention) or ``to_kv`` (cross-attention),
    built once from copies of ``to_q``/``to_k``/``to_v``; writing in place keeps the fused
    layers' storage, so compiled code and recorded CUDA graphs see the change.
    """
    parents = {
        (component, name.rsplit(".", 1)[0])
        for component, name in touched
        if name.endswith((".to_q", ".to_k", ".to_v"))
    }
    for component, parent_name in parents:
        attention = modules[component].get_submodule(parent_name)
        if not getattr(attention, "fused_projections", False):
            continue
        q, k, v = (getattr(attention, n).weight for n in ("to_q", "to_k", "to_v"))
        fused_qkv = getattr(attention, "to_qkv", None)
        fused_kv = getattr(attention, "to_kv", None)
        if fused_qkv is not None and not attention.is_cross_attention:
            _store_weight(fused_qkv, torch.cat([q, k, v]))
        elif fused_kv is not None:
            _store_weight(fused_kv, torch.cat([k, v]))

"""Single-file checkpoints in the original CompVis/Stability layout, loaded with no network.

The family, variant and prediction type are detected from key names and shapes; every network's
configuration is derived from the tensors themselves (channels, levels, depths, widths), with the
family's convention only where weights cannot tell (attention heads, norm groups). Tensors are
read one at a time into modules created without random initialisation.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from inferkit.errors import InvalidParameterError, ModelNotFoundError, UnsupportedModelError
from inferkit.loaders import ldm_layout as L
from inferkit.loaders.base import PICKLE_SUFFIXES, Components, LoadOptions
from inferkit.loaders.pickle_file import PickleWeights
from inferkit.loaders.weights import WeightFiles, WeightSource, fill, no_init
from inferkit.safetensors_io import SafetensorsFile, TensorEntry
from inferkit.schedulers import SD_NOISE_SCHEDULE

__all__ = ["CheckpointInfo", "SingleFileLoader", "detect", "inspect_file"]

T = TypeVar("T")


def _typed(source: str, work: Callable[[], T]) -> T:
    """Run ``work``; a layout it cannot read becomes an UnsupportedModelError naming the file."""
    try:
        return work()
    except InvalidParameterError:
        raise
    except (KeyError, StopIteration, ValueError, IndexError) as e:
        if isinstance(e, UnsupportedModelError):
            raise
        raise UnsupportedModelError(
            f"{source!r} has an unexpected checkpoint layout ({type(e).__name__}: {e}); it may "
            "be damaged, or a model type inferkit does not know",
            source=source,
        ) from e


_OPTIONS = frozenset({"prediction", "ema", "tokenizer", "tokenizer_2"})
_SCHEDULER_BASE: dict[str, Any] = {
    **SD_NOISE_SCHEDULE,
    "timestep_spacing": "leading",
    # As in the SD releases' own configs: clipping x0 to [-1, 1] is for pixel-space models.
    "clip_sample": False,
    "set_alpha_to_one": False,
}
_RESOLUTION = {"sd1": 512, "sd2": 768, "sdxl": 1024, "sdxl_refiner": 1024}
_TOKENIZER_REPOS = {
    "clip-l": [
        ("openai/clip-vit-large-patch14", ""),
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
    ],
    "openclip-h": [
        ("stabilityai/stable-diffusion-2-1", "tokenizer"),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", ""),
    ],
    "openclip-g": [
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
        ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
    ],
}


@attrs.frozen(kw_only=True)
class CheckpointInfo:
    """What a single-file checkpoint is, read from its header alone (see :func:`inspect_file`).

    Attributes:
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"``.
        variant: ``"base"`` or ``"inpainting"`` (9 input channels).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        stored_dtype: the dtype most of the UNet's tensors are stored in.
        has_ema: whether EMA copies of the UNet weights are present.
        resolution: the native image size.
        zero_snr: whether the file marks zero-terminal-SNR training.
        evidence: what decided each of the above.

    Example:
        >>> import inferkit, inferkit.testing, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> f = inferkit.testing.write_single_file(inferkit.testing.tiny_model_path("sdxl"), out)
        >>> info = inferkit.inspect_file(f)
        >>> info.family, info.variant, info.stored_dtype
        ('sdxl', 'base', 'float32')

    """

    family: str
    variant: str
    prediction_type: str
    stored_dtype: str
    has_ema: bool
    resolution: int
    zero_snr: bool
    evidence: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return attrs.asdict(self)


def _shape(entries: Mapping[str, TensorEntry], key: str) -> tuple[int, ...]:
    entry = entries.get(key)
    if entry is None:
        raise KeyError(key)
    return entry.shape


def detect(
    entries: Mapping[str, TensorEntry],
    metadata: Mapping[str, str],
    source: str,
    prediction: str | None = None,
) -> CheckpointInfo:
    """Detect family, variant and prediction type from tensor names, shapes and metadata."""
    evidence: list[str] = []
    if L.SDXL_OPENCLIP_PREFIX + "ln_final.weight" in entries:
        family = "sdxl"
        evidence.append(f"key {L.SDXL_OPENCLIP_PREFIX}ln_final.weight (two text encoders) -> sdxl")
    elif L.REFINER_OPENCLIP_PREFIX + "ln_final.weight" in entries:
        family = "sdxl_refiner"
        evidence.append(
            "key conditioner.embedders.0.model.ln_final.weight (OpenCLIP only) -> sdxl_refiner"
        )
    elif L.OPENCLIP_PREFIX + "ln_final.weight" in entries:
        family = "sd2"
        evidence.append(f"key {L.OPENCLIP_PREFIX}ln_final.weight (OpenCLIP text encoder) -> sd2")
    elif L.CLIP_PREFIX + "text_model.final_layer_norm.weight" in entries:
        family = "sd1"
        evidence.append(f"key {L.CLIP_PREFIX}text_model.final_layer_norm.weight (CLIP-L) -> sd1")
    else:
        raise UnsupportedModelError(
            f"{source!r} is not a Stable Diffusion 1.x/2.x/XL checkpoint: none of the text encoder "
            "keys of those families is present (is it a LoRA, a VAE or another model type?)",
            source=source,
        )
    if L.UNET_PREFIX + "input_blocks.0.0.weight" not in entries:
        raise UnsupportedModelError(
            f"{source!r} has no UNet ({L.UNET_PREFIX}input_blocks.0.0.weight is missing)",
            source=source,
        )
    in_channels = _shape(entries, L.UNET_PREFIX + "input_blocks.0.0.weight")[1]
    out_channels = _shape(entries, L.UNET_PREFIX + "out.2.weight")[0]
    if in_channels == out_channels:
        variant = "base"
    else:
        variant = "inpainting" if in_channels == 9 else f"{in_channels}-channel input"
    evidence.append(f"UNet input channels {in_channels} -> {variant}")

    zero_snr = "ztsnr" in entries
    spec = metadata.get("modelspec.prediction_type", "").lower()
    if prediction is not None:
        pred = {
            "v": "v_prediction",
            "v_prediction": "v_prediction",
            "epsilon": "epsilon",
            "eps": "epsilon",
        }.get(prediction)
        if pred is None:
            raise InvalidParameterError("prediction", prediction, "must be 'v' or 'epsilon'")
        evidence.append(f"prediction {pred}: given by prediction={prediction!r}")
    elif "v_pred" in entries or zero_snr:
        pred = "v_prediction"
        marker = "v_pred" if "v_pred" in entries else "ztsnr"
        evidence.append(f"prediction v_prediction: marker key {marker!r}")
    elif spec in {"v", "v_prediction"} or spec in {"epsilon", "eps"}:
        pred = "v_prediction" if spec.startswith("v") else "epsilon"
        evidence.append(f"prediction {pred}: metadata modelspec.prediction_type={spec!r}")
    else:
        pred = "v_prediction" if family == "sd2" else "epsilon"
        why = "SD2.x default (768-v models)" if family == "sd2" else f"{family} default"
        evidence.append(f"prediction {pred}: {why}; override with prediction='v'|'epsilon'")
    if zero_snr:
        evidence.append("zero terminal SNR: marker key 'ztsnr'")

    unet_dtypes = Counter(e.dtype for n, e in entries.items() if n.startswith(L.UNET_PREFIX))
    stored = unet_dtypes.most_common(1)[0][0]
    evidence.append(
        f"stored dtype {stored} ({unet_dtypes[stored]} of {sum(unet_dtypes.values())} UNet tensors)"
    )
    has_ema = any(
        n.startswith("model_ema.") and not n.endswith(("decay", "num_updates")) for n in entries
    )
    if has_ema:
        evidence.append("EMA weights present (model_ema.*); non-EMA used unless ema=True")
    resolution = _RESOLUTION[family]
    if (size := re.match(r"^(\d+)x(\d+)$", metadata.get("modelspec.resolution", ""))) is not None:
        resolution = int(size[1])
        evidence.append(f"native size {resolution}: metadata modelspec.resolution")
    else:
        evidence.append(f"native size {resolution}: {family} default")
    return CheckpointInfo(
        family=family,
        variant=variant,
        prediction_type=pred,
        stored_dtype={"F16": "float16", "BF16": "bfloat16", "F32": "float32"}.get(stored, stored),
        has_ema=has_ema,
        resolution=resolution,
        zero_snr=zero_snr,
        evidence=tuple(evidence),
    )


def inspect_file(path: str | os.PathLike[str], prediction: str | None = None) -> CheckpointInfo:
    """Read only the header of a single-file checkpoint and say what it is.

    Answers in milliseconds for multi-GB files: no tensor data is read.

    Raises:
        ModelNotFoundError: no such file.
        UnsupportedModelError: not a valid safetensors file, or not an SD 1.x/2.x/XL checkpoint.

    Example:
        >>> import inferkit.testing, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> f = inferkit.testing.write_single_file(inferkit.testing.tiny_model_path("sd2"), out)
        >>> d = inspect_file(f)
        >>> d.family, d.prediction_type
        ('sd2', 'v_prediction')

    """
    with SafetensorsFile(path) as f:
        return _typed(str(path), lambda: detect(f.tensors, f.metadata, str(path), prediction))


# --- configs derived from the tensors ---------------------------------------------------------


def _indices(entries: Mapping[str, TensorEntry], pattern: str) -> list[int]:
    found = {int(m[1]) for name in entries if (m := re.match(pattern, name))}
    return sorted(found)


def _depth(entries: Mapping[str, TensorEntry], prefix: str) -> int:
    return len(_indices(entries, re.escape(prefix) + r"transformer_blocks\.(\d+)\."))


def unet_config(entries: Mapping[str, TensorEntry], family: str, resolution: int) -> dict[str, Any]:
    """Derive a ``UNet2DConditionModel`` config from original-layout UNet tensors."""
    p = L.UNET_PREFIX
    conv_in = _shape(entries, p + "input_blocks.0.0.weight")
    down_ops = _indices(entries, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight")
    blocks = _indices(entries, re.escape(p) + r"input_blocks\.(\d+)\.")
    lpb = (down_ops[0] - 1) if down_ops else (max(blocks))
    levels = len(down_ops) + 1
    channels, down_types, depths = [], [], []
    for i in range(levels):
        first = 1 + i * (lpb + 1)
        channels.append(_shape(entries, f"{p}input_blocks.{first}.0.out_layers.3.weight")[0])
        attn = f"{p}input_blocks.{first}.1."
        if attn + "proj_in.weight" in entries:
            down_types.append("CrossAttnDownBlock2D")
            depths.append(_depth(entries, attn))
        else:
            down_types.append("DownBlock2D")
            depths.append(1)
    up_types = [
        "CrossAttnUpBlock2D"
        if f"{p}output_blocks.{i * (lpb + 1)}.1.proj_in.weight" in entries
        else "UpBlock2D"
        for i in range(levels)
    ]
    to_k = next(
        e for n, e in entries.items() if n.startswith(p) and n.endswith("attn2.to_k.weight")
    )
    proj_in = next(
        e for n, e in entries.items() if n.startswith(p) and n.endswith(".proj_in.weight")
    )
    # diffusers has no setting for the middle block's depth: it takes the last level's.
    mid_depth = _depth(entries, p + "middle_block.1.")
    if down_types[-1] == "DownBlock2D":
        depths[-1] = mid_depth or 1
    elif mid_depth != depths[-1]:
        raise UnsupportedModelError(
            f"middle block depth {mid_depth} differs from the last level's {depths[-1]}",
            source="unet",
        )
    if family == "sd1":
        heads: int | list[int] = 8
    else:
        heads = [max(1, c // 64) for c in channels]
    config: dict[str, Any] = {
        "sample_size": resolution // 8,
        "in_channels": conv_in[1],
        "out_channels": _shape(entries, p + "out.2.weight")[0],
        "layers_per_block": lpb,
        "block_out_channels": channels,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "cross_attention_dim": to_k.shape[1],
        "attention_head_dim": heads,
        "use_linear_projection": len(proj_in.shape) == 2,
        "transformer_layers_per_block": depths if len(set(depths)) > 1 else depths[0],
        "norm_num_groups": 32,
    }
    if p + "label_emb.0.0.weight" in entries:
        adm = _shape(entries, p + "label_emb.0.0.weight")[1]
        prefix = L.SDXL_OPENCLIP_PREFIX if family == "sdxl" else L.REFINER_OPENCLIP_PREFIX
        pooled_key = prefix + "text_projection"
        pooled = _shape(entries, pooled_key)[1]
        ids = 6 if family == "sdxl" else 5
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": (adm - pooled) // ids,
            "projection_class_embeddings_input_dim": adm,
        }
    return config


def vae_config(
    entries: Mapping[str, TensorEntry], family: str, resolution: int, prefix: str = L.VAE_PREFIX
) -> dict[str, Any]:
    """Derive an ``AutoencoderKL`` config from original-layout VAE tensors."""
    p = prefix
    levels = len(_indices(entries, re.escape(p) + r"encoder\.down\.(\d+)\."))
    if levels == 0:
        raise UnsupportedModelError(f"no VAE encoder found under {p!r}", source=p)
    channels = [
        _shape(entries, f"{p}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)
    ]
    lpb = len(_indices(entries, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    xl = family.startswith("sdxl")
    return {
        "in_channels": _shape(entries, p + "encoder.conv_in.weight")[1],
        "out_channels": _shape(entries, p + "decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": lpb,
        "latent_channels": _shape(entries, p + "post_quant_conv.weight")[0],
        "norm_num_groups": 32,
        "sample_size": resolution,
        "scaling_factor": 0.13025 if xl else 0.18215,
        "force_upcast": xl,
    }


def _clip_config(
    *, vocab: int, width: int, positions: int, layers: int, inner: int, act: str, projection: int
) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "max_position_embeddings": positions,
        "num_hidden_layers": layers,
        "intermediate_size": inner,
        "num_attention_heads": max(1, width // 64),
        "hidden_act": act,
        "projection_dim": projection,
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": 1,
    }


def clip_config(entries: Mapping[str, TensorEntry], prefix: str) -> dict[str, Any]:
    """Derive a transformers ``CLIPTextConfig`` from HF-named CLIP-L tensors."""
    vocab, width = _shape(entries, prefix + "text_model.embeddings.token_embedding.weight")
    return _clip_config(
        vocab=vocab,
        width=width,
        positions=_shape(entries, prefix + "text_model.embeddings.position_embedding.weight")[0],
        layers=len(_indices(entries, re.escape(prefix) + r"text_model\.encoder\.layers\.(\d+)\.")),
        inner=_shape(entries, prefix + "text_model.encoder.layers.0.mlp.fc1.weight")[0],
        act="quick_gelu",
        projection=width,
    )


def openclip_config(
    entries: Mapping[str, TensorEntry], prefix: str, drop_last: bool
) -> dict[str, Any]:
    """Derive a ``CLIPTextConfig`` from OpenCLIP tensors (SD2 uses all but the last layer)."""
    vocab, width = _shape(entries, prefix + "token_embedding.weight")
    layers = len(_indices(entries, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
    projection = (
        _shape(entries, prefix + "text_projection")[1]
        if prefix + "text_projection" in entries
        else width
    )
    return _clip_config(
        vocab=vocab,
        width=width,
        positions=_shape(entries, prefix + "positional_embedding")[0],
        layers=layers - 1 if drop_last else layers,
        inner=_shape(entries, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        act="gelu",
        projection=projection,
    )


# --- reading tensors into modules -------------------------------------------------------------


def _tokenizer(
    kind: str, given: str | os.PathLike[str] | None, options: LoadOptions, source: str
) -> tuple[Any, str]:
    from transformers import CLIPTokenizer

    from inferkit._quiet import quiet_libraries

    if given is not None:
        path = Path(given)
        if not path.exists():
            raise ModelNotFoundError(
                f"tokenizer folder {str(path)!r} does not exist", source=str(path)
            )
        with quiet_libraries():
            try:
                return CLIPTokenizer.from_pretrained(
                    path, local_files_only=True
                ), f"tokenizer from {path}"
            except (OSError, ValueError) as e:
                raise UnsupportedModelError(
                    f"{path} is not a CLIP tokenizer folder (it needs vocab.json and "
                    f"merges.txt, or tokenizer.json): {e}",
                    source=str(path),
                ) from e
    from inferkit.loaders.hub import cached_folder

    tried = []
    for repo, sub in _TOKENIZER_REPOS[kind]:
        folder = cached_folder(repo, options)
        tried.append(repo)
        if folder is not None and (folder / sub).is_dir():
            with quiet_libraries():
                try:
                    tok = CLIPTokenizer.from_pretrained(
                        folder / sub if sub else folder, local_files_only=True
                    )
                except (OSError, ValueError):
                    continue
            return tok, f"tokenizer from the hub cache: {repo}" + (f"/{sub}" if sub else "")
    option = "tokenizer_2=" if kind == "openclip-g" else "tokenizer="
    raise ModelNotFoundError(
        f"{source!r} needs a CLIP tokenizer, which single-file checkpoints do not contain, and "
        f"none was found offline (looked in the Hugging Face cache for {', '.join(tried)}). "
        f"Either pass {option}'path/to/tokenizer' (a folder with vocab.json and merges.txt, e.g. "
        f"a diffusers model's tokenizer/ folder), or on a connected machine run "
        f"`hf download {tried[0]}` so the cache has it",
        source=source,
    )


class SingleFileLoader:
    """Loads original-layout ``.safetensors`` checkpoints without any network access.

    Pickle checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) load only when
    ``Model.load(..., allow_pickle=True)`` is given, through the restricted unpickler of
    :mod:`inferkit.loaders.pickle_file`.

    Options (keyword arguments of :meth:`Model.load`): ``prediction="v"|"epsilon"`` overrides
    detection; ``ema=True`` uses the EMA weights; ``tokenizer=`` / ``tokenizer_2=`` give
    tokenizer folders (otherwise the family's tokenizer is taken from the local hub cache).

    Example:
        >>> import inferkit, torch
        >>> options = inferkit.LoadOptions(dtype=torch.float32)
        >>> SingleFileLoader().accepts("missing.safetensors", options)
        False

    """

    name = "single-file"
    options = _OPTIONS

    def accepts(self, source: str, options: LoadOptions) -> bool:
        """Accept existing ``.safetensors`` files (and pickle checkpoints with allow_pickle)."""
        try:
            path = Path(source).expanduser()
            suffix = path.suffix.lower()
            wanted = suffix == ".safetensors" or (
                options.allow_pickle and suffix in PICKLE_SUFFIXES
            )
            return wanted and path.exists()
        except (OSError, ValueError):
            return False

    def load(self, source: str, options: LoadOptions) -> Components:
        """Detect, derive configs, and stream the tensors into fresh modules."""
        path = Path(source).expanduser()
        extra = dict(options.extra)
        ema = extra.get("ema", False)
        if not isinstance(ema, bool):
            raise InvalidParameterError("ema", ema, "must be True or False")
        tolerated: list[str] = []
        pickled = path.suffix.lower() in PICKLE_SUFFIXES
        with PickleWeights(path) if pickled else WeightFiles([path]) as f:
            det = _typed(
                source, lambda: detect(f.tensors, f.metadata, source, extra.get("prediction"))
            )
            if ema and not det.has_ema:
                raise InvalidParameterError(
                    "ema", True, f"{path.name} holds no EMA weights (model_ema.*)"
                )
            evidence = list(det.evidence)
            tokenizers = self._tokenizers(det, extra, options, source, evidence)
            modules, used = _typed(
                source, lambda: self._networks(f, det, options, source, ema, tolerated)
            )
        modules.update(tokenizers)
        ignored = [n for n in f.tensors if n not in used]
        if ignored:
            evidence.append(
                f"ignored {len(ignored)} tensors not used for inference (e.g. {ignored[0]})"
            )
        scheduler = {
            "_class_name": "EulerDiscreteScheduler",
            **_SCHEDULER_BASE,
            "prediction_type": det.prediction_type,
        }
        if det.zero_snr:
            scheduler |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
        return Components(
            architecture=det.family,
            modules=modules,
            scheduler_config=scheduler,
            prediction_type=det.prediction_type,
            name=path.stem,
            source=source,
            loader=self.name,
            files=(path,),
            evidence=tuple(evidence),
            pipeline_options={"force_zeros_for_empty_prompt": det.family == "sdxl"},
            variant=det.variant,
            warnings=tuple(tolerated),
            vae_settings={
                "scaling_factor": 0.13025 if det.family.startswith("sdxl") else 0.18215,
                "force_upcast": det.family.startswith("sdxl"),
                "sample_size": det.resolution,
            },
        )

    def _tokenizers(
        self,
        det: CheckpointInfo,
        extra: dict[str, Any],
        options: LoadOptions,
        source: str,
        evidence: list[str],
    ) -> dict[str, Any]:
        """Find the tokenizers first, so that a missing one is reported before any tensor loads."""
        found: dict[str, Any] = {}
        kinds = {"sd1": "clip-l", "sd2": "openclip-h", "sdxl": "clip-l"}
        if det.family in kinds:
            found["tokenizer"], why = _tokenizer(
                kinds[det.family], extra.get("tokenizer"), options, source
            )
            evidence.append(why)
        if det.family.startswith("sdxl"):
            reuse = "tokenizer_2" not in extra and "tokenizer" in extra
            given = extra.get("tokenizer") if reuse else extra.get("tokenizer_2")
            tokenizer_2, why = _tokenizer("openclip-g", given, options, source)
            if reuse:
                # SDXL's OpenCLIP tokenizer is CLIP's BPE with "!" as padding.
                tokenizer_2.pad_token = "!"
                why += " (reused for the second encoder, padding with '!')"
            found["tokenizer_2"] = tokenizer_2
            evidence.append(why)
        return found

    def _networks(
        self,
        f: WeightSource,
        det: CheckpointInfo,
        options: LoadOptions,
        source: str,
        ema: bool,
        tolerated: list[str],
    ) -> tuple[dict[str, Any], set[str]]:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        entries = f.tensors
        family = det.family
        dtype = options.dtype
        modules: dict[str, Any] = {}
        used: set[str] = set()
        device = options.device
        warn = None if options.strict else tolerated
        ucfg = unet_config(entries, family, det.resolution)
        with no_init():
            unet = UNet2DConditionModel(**ucfg)
        up_attention = [t.startswith("CrossAttn") for t in ucfg["up_block_types"]]
        lpb = ucfg["layers_per_block"]
        used |= fill(
            unet,
            f,
            lambda k: (L.unet_key(k, lpb, up_attention), "same"),
            dtype,
            source,
            rename=L.ema_key if ema else None,
            device=device,
            warnings=warn,
        )
        modules["unet"] = unet
        if options.vae is None:
            if L.VAE_PREFIX + "encoder.conv_in.weight" not in entries:
                raise UnsupportedModelError(
                    f"{source!r} holds no VAE (no {L.VAE_PREFIX}* tensors); pass vae= a VAE "
                    "file or diffusers folder",
                    source=source,
                )
            vcfg = vae_config(entries, family, det.resolution)
            with no_init():
                vae = AutoencoderKL(**vcfg)
            levels = len(vcfg["block_out_channels"])
            used |= fill(
                vae,
                f,
                lambda k: L.vae_key(k, levels),
                dtype,
                source,
                device=device,
                warnings=warn,
            )
            modules["vae"] = vae
        encoders: list[tuple[str, dict[str, Any], Any, Callable[[str], tuple[str, str]]]] = []
        if family == "sd1":
            encoders.append(
                (
                    "text_encoder",
                    clip_config(entries, L.CLIP_PREFIX),
                    CLIPTextModel,
                    lambda k: L.clip_key(k, L.CLIP_PREFIX),
                )
            )
        elif family == "sd2":
            encoders.append(
                (
                    "text_encoder",
                    openclip_config(entries, L.OPENCLIP_PREFIX, drop_last=True),
                    CLIPTextModel,
                    lambda k: L.openclip_key(k, L.OPENCLIP_PREFIX),
                )
            )
        elif family == "sdxl_refiner":
            encoders.append(
                (
                    "text_encoder_2",
                    openclip_config(entries, L.REFINER_OPENCLIP_PREFIX, drop_last=False),
                    CLIPTextModelWithProjection,
                    lambda k: L.openclip_key(k, L.REFINER_OPENCLIP_PREFIX),
                )
            )
        elif family == "sdxl":
            encoders.append(
                (
                    "text_encoder",
                    clip_config(entries, L.SDXL_CLIP_PREFIX),
                    CLIPTextModel,
                    lambda k: L.clip_key(k, L.SDXL_CLIP_PREFIX),
                )
            )
            encoders.append(
                (
                    "text_encoder_2",
                    openclip_config(entries, L.SDXL_OPENCLIP_PREFIX, drop_last=False),
                    CLIPTextModelWithProjection,
                    lambda k: L.openclip_key(k, L.SDXL_OPENCLIP_PREFIX),
                )
            )
        for name, cfg, cls, mapping in encoders:
            with no_init():
                model = cls(CLIPTextConfig(**cfg))
            used |= fill(model, f, mapping, dtype, source, device=device, warnings=warn)
            modules[name] = model
        return modules, used

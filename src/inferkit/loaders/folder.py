"""Load diffusers-format folders (``model_index.json`` plus one folder per component)."""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferkit._quiet import quiet_libraries
from inferkit.errors import UnsupportedModelError
from inferkit.loaders.base import Components, LoadOptions
from inferkit.loaders.weights import fill, no_init, open_weights

__all__ = ["FolderLoader", "detect_architecture"]

_SD_PIPELINES = {
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
}
_SDXL_PIPELINES = {
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
}


_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
_TRANSFORMERS_WEIGHTS = "model"
_TEXT_ENCODERS = {"CLIPTextModel", "CLIPTextModelWithProjection"}
_TOKENIZERS = {"CLIPTokenizer", "CLIPTokenizerFast"}


def _read_json(path: Path, source: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # JSON errors are ValueErrors
        raise UnsupportedModelError(
            f"{path} could not be read as JSON ({type(e).__name__}: {str(e)[:200]}); "
            "re-download or re-export the model",
            source=source,
        ) from e
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} must hold a JSON object", source=source)
    return data


def detect_architecture(
    index: dict[str, Any], unet_config: dict[str, Any], source: str
) -> tuple[str, tuple[str, ...]]:
    """Decide the family from ``model_index.json`` and the UNet config; return it with evidence.

    SD2.x is told from SD1.x by its linear attention projections (or 1024-wide context), which
    holds for scaled-down models too.
    """
    cls = index.get("_class_name")
    evidence = [f"model_index.json _class_name={cls}"]
    if cls in _SDXL_PIPELINES:
        if (index.get("text_encoder") or [None])[0] is None:
            evidence.append("SDXL pipeline class without a first text encoder -> sdxl_refiner")
            return "sdxl_refiner", tuple(evidence)
        evidence.append("SDXL pipeline class -> sdxl")
        return "sdxl", tuple(evidence)
    if cls in _SD_PIPELINES:
        linear = bool(unet_config.get("use_linear_projection", False))
        context = unet_config.get("cross_attention_dim")
        if linear or context == 1024:
            evidence.append(
                f"unet use_linear_projection={linear}, cross_attention_dim={context} -> sd2"
            )
            return "sd2", tuple(evidence)
        evidence.append(
            f"unet use_linear_projection={linear}, cross_attention_dim={context} -> sd1"
        )
        return "sd1", tuple(evidence)
    supported = ", ".join(sorted(_SD_PIPELINES | _SDXL_PIPELINES))
    raise UnsupportedModelError(
        f"{source!r} is a {cls} model; inferkit runs Stable Diffusion 1.x/2.x/XL ({supported})",
        source=source,
    )


class FolderLoader:
    """Loads a diffusers folder from disk, never touching the network.

    Each component is created with its own class (the class names in ``model_index.json`` are
    checked against an allow-list, so a folder cannot make inferkit import arbitrary classes),
    built from its ``config.json`` without initialising weights, then filled from its
    safetensors file (or checked shards) directly in the requested dtype and on the target
    device. Missing, unexpected and wrongly shaped weights are errors.

    Example:
        >>> import inferkit, torch
        >>> loader = FolderLoader()
        >>> path = str(inferkit.testing.tiny_model_path("sd1"))
        >>> loader.accepts(path, inferkit.LoadOptions(dtype=torch.float32))
        True

    """

    name = "diffusers-folder"

    def accepts(self, source: str, options: LoadOptions) -> bool:
        """Accept an existing folder that holds a ``model_index.json``."""
        try:
            return (Path(source).expanduser() / "model_index.json").is_file()
        except (OSError, ValueError):
            return False

    def load(self, source: str, options: LoadOptions) -> Components:
        """Load every component of the folder at ``source``."""
        root = Path(source).expanduser()
        return load_folder(root, source=source, options=options, loader=self.name, name=root.name)


def _variant(unet_config: dict[str, Any]) -> str:
    """Name UNets that need more than noise as input (inpainting: 9 channels)."""
    channels = unet_config.get("in_channels", 4)
    if channels == unet_config.get("out_channels", 4):
        return "base"
    return "inpainting" if channels == 9 else f"{channels}-channel input"


def _component_class(index: dict[str, Any], key: str, allowed: set[str], source: str) -> str:
    entry = index.get(key)
    if not isinstance(entry, list) or len(entry) != 2 or entry[1] not in allowed:
        raise UnsupportedModelError(
            f"{source!r}: model_index.json lists {key}={entry!r}; expected one of "
            f"{', '.join(sorted(allowed))}",
            source=source,
        )
    return str(entry[1])


def load_folder(
    root: Path, *, source: str, options: LoadOptions, loader: str, name: str
) -> Components:
    """Load a diffusers folder at ``root`` (also used by the hub loader on a cache snapshot)."""
    import diffusers
    import transformers

    index = _read_json(root / "model_index.json", source)
    unet_config = _read_json(root / "unet" / "config.json", source)
    architecture, evidence = detect_architecture(index, unet_config, source)
    scheduler_config = _read_json(root / "scheduler" / "scheduler_config.json", source)
    prediction = str(scheduler_config.get("prediction_type", "epsilon"))
    evidence += (f"scheduler_config.json prediction_type={prediction}",)

    pairs = [] if architecture == "sdxl_refiner" else [("text_encoder", "tokenizer")]
    if architecture.startswith("sdxl"):
        pairs.append(("text_encoder_2", "tokenizer_2"))
    modules: dict[str, Any] = {}
    weight_files: list[Path] = []
    tolerated: list[str] = []
    with warnings.catch_warnings(), quiet_libraries():
        warnings.filterwarnings("ignore", category=FutureWarning)
        modules["unet"] = _network(
            lambda: diffusers.UNet2DConditionModel.from_config(unet_config),
            root / "unet",
            _DIFFUSERS_WEIGHTS,
            options,
            source,
            weight_files,
            tolerated,
        )
        vae_config = _read_json(root / "vae" / "config.json", source)
        if options.vae is None:
            modules["vae"] = _network(
                lambda: diffusers.AutoencoderKL.from_config(vae_config),
                root / "vae",
                _DIFFUSERS_WEIGHTS,
                options,
                source,
                weight_files,
                tolerated,
            )
        for encoder_key, tokenizer_key in pairs:
            enc_cls = getattr(
                transformers, _component_class(index, encoder_key, _TEXT_ENCODERS, source)
            )
            tok_cls = _component_class(index, tokenizer_key, _TOKENIZERS, source)
            folder = root / encoder_key
            config = _text_config(enc_cls, folder, source)
            modules[encoder_key] = _network(
                functools.partial(enc_cls, config),
                folder,
                _TRANSFORMERS_WEIGHTS,
                options,
                source,
                weight_files,
                tolerated,
            )
            modules[tokenizer_key] = _load(
                getattr(transformers, tok_cls),
                root / tokenizer_key,
                {"local_files_only": True},
                source,
            )
    used = {name for pair in pairs for name in pair} | {"unet", "scheduler"}
    if options.vae is None:
        used.add("vae")
    files = (
        root / "model_index.json",
        *sorted(
            {
                *weight_files,
                *(
                    p
                    for name in used
                    for p in (root / name).iterdir()
                    if p.is_file() and p.suffix in {".json", ".txt"}
                ),
            }
        ),
    )
    return Components(
        architecture=architecture,
        modules=modules,
        scheduler_config=scheduler_config,
        prediction_type=prediction,
        name=name,
        source=source,
        loader=loader,
        files=files,
        evidence=evidence,
        vae_settings={
            "scaling_factor": vae_config.get("scaling_factor", 0.18215),
            "force_upcast": vae_config.get("force_upcast", True),
            "sample_size": vae_config.get("sample_size", 512),
        },
        variant=_variant(unet_config),
        warnings=tuple(tolerated),
        pipeline_options={k: index[k] for k in ("force_zeros_for_empty_prompt",) if k in index},
    )


def _require(folder: Path, source: str) -> None:
    if not folder.is_dir():
        raise UnsupportedModelError(
            f"{source!r} has no {folder.name}/ folder, which model_index.json requires",
            source=source,
        )


def _load(cls: Any, folder: Path, kwargs: dict[str, Any], source: str) -> Any:
    _require(folder, source)
    try:
        return cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(
            f"could not load {folder} as {cls.__name__}: {e}. Re-export the model with "
            "save_pretrained",
            source=source,
        ) from e


def _text_config(cls: Any, folder: Path, source: str) -> Any:
    _require(folder, source)
    try:
        return cls.config_class.from_pretrained(folder, local_files_only=True)
    except (OSError, *_CONFIG_ERRORS) as e:
        raise UnsupportedModelError(
            f"could not read {folder / 'config.json'} as a {cls.config_class.__name__}: {e}",
            source=source,
        ) from e


# What building a network from a hostile config can raise (zero groups, zero heads, ...).
_CONFIG_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    ArithmeticError,
    AttributeError,
    AssertionError,
    RuntimeError,
    RecursionError,
)
# Older diffusers exports name the VAE's attention projections differently.
_OLD_ATTENTION = {
    ".to_q.": ".query.",
    ".to_k.": ".key.",
    ".to_v.": ".value.",
    ".to_out.0.": ".proj_attn.",
}
# Buffers that older exports saved and current modules rebuild themselves.
_IGNORABLE = re.compile(r"(^|\.)position_ids$")


def _network(
    build: Callable[[], Any],
    folder: Path,
    stem: str,
    options: LoadOptions,
    source: str,
    weight_files: list[Path],
    tolerated: list[str],
) -> Any:
    """Build a module on meta from its config and fill it from the folder's safetensors."""
    _require(folder, source)
    try:
        with no_init():
            module = build()
    except _CONFIG_ERRORS as e:
        raise UnsupportedModelError(
            f"{folder / 'config.json'} does not describe a network inferkit can build ({e})",
            source=source,
        ) from e
    with open_weights(folder, stem, source) as f:

        def mapping(key: str) -> tuple[str, str]:
            if key in f.tensors:
                return key, "same"
            for new, old in _OLD_ATTENTION.items():
                stored = key.replace(new, old)
                if stored != key and stored in f.tensors:
                    return stored, _old_transform(f.tensors[stored])
            return key, "same"

        used = fill(
            module,
            f,
            mapping,
            options.dtype,
            str(folder),
            device=options.device,
            warnings=None if options.strict else tolerated,
        )
        unexpected = sorted(k for k in f.tensors if k not in used and not _IGNORABLE.search(k))
        if unexpected:
            more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            text = (
                f"{folder} holds {len(unexpected)} weights its {type(module).__name__} does not "
                f"have: {', '.join(unexpected[:5])}{more}. The weights do not match config.json"
            )
            if options.strict:
                raise UnsupportedModelError(
                    text + "; re-export the model (strict=False ignores them)", source=source
                )
            tolerated.append(text + "; they were ignored (strict=False)")
        weight_files.extend(f.paths)
    return module


def _old_transform(entry: Any) -> str:
    # Old VAE attention projections are stored as 1x1 convolutions in some exports.
    return "conv1x1" if len(entry.shape) == 4 else "same"

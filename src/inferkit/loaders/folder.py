"""Load diffusers-format folders (``model_index.json`` plus one folder per component)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from inferkit._quiet import quiet_libraries
from inferkit.errors import UnsupportedModelError
from inferkit.loaders.base import Components, LoadOptions

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


def _transformers_dtype_kwarg() -> str:
    from importlib.metadata import version

    major, minor = (int(x) for x in version("transformers").split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


_TRANSFORMERS_DTYPE = _transformers_dtype_kwarg()
_TEXT_ENCODERS = {"CLIPTextModel", "CLIPTextModelWithProjection"}
_TOKENIZERS = {"CLIPTokenizer", "CLIPTokenizerFast"}


def _read_json(path: Path, source: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnsupportedModelError(
            f"{path} could not be read as JSON ({e}); re-download or re-export the model",
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
    from safetensors weights only, directly in the requested dtype.

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
    common: dict[str, Any] = {"local_files_only": True}
    weights: dict[str, Any] = {**common, "torch_dtype": options.dtype, "use_safetensors": True}
    # transformers >= 4.56 names it dtype; its deprecated torch_dtype path is 4x slower.
    text_weights = {**common, _TRANSFORMERS_DTYPE: options.dtype, "use_safetensors": True}
    modules: dict[str, Any] = {}
    with warnings.catch_warnings(), quiet_libraries():
        warnings.filterwarnings("ignore", category=FutureWarning)
        modules["unet"] = _load(diffusers.UNet2DConditionModel, root / "unet", weights, source)
        vae_config = _read_json(root / "vae" / "config.json", source)
        if options.vae is None:
            modules["vae"] = _load(diffusers.AutoencoderKL, root / "vae", weights, source)
        for encoder_key, tokenizer_key in pairs:
            enc_cls = _component_class(index, encoder_key, _TEXT_ENCODERS, source)
            tok_cls = _component_class(index, tokenizer_key, _TOKENIZERS, source)
            modules[encoder_key] = _load(
                getattr(transformers, enc_cls), root / encoder_key, text_weights, source
            )
            modules[tokenizer_key] = _load(
                getattr(transformers, tok_cls), root / tokenizer_key, common, source
            )
    used = {name for pair in pairs for name in pair} | {"unet", "scheduler"}
    if options.vae is None:
        used.add("vae")
    files = (
        root / "model_index.json",
        *sorted(
            p
            for name in used
            for p in (root / name).iterdir()
            if p.is_file()
            and p.suffix in {".json", ".safetensors", ".txt"}
            and p.name.count(".") == 1  # skip variants such as model.fp16.safetensors
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
        pipeline_options={k: index[k] for k in ("force_zeros_for_empty_prompt",) if k in index},
    )


def _load(cls: Any, folder: Path, kwargs: dict[str, Any], source: str) -> Any:
    if not folder.is_dir():
        raise UnsupportedModelError(
            f"{source!r} has no {folder.name}/ folder, which model_index.json requires",
            source=source,
        )
    try:
        module = cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(
            f"could not load {folder} as {cls.__name__}: {e}. The folder needs safetensors "
            "weights and a config.json; re-export it with save_pretrained(safe_serialization=True)",
            source=source,
        ) from e
    if hasattr(module, "eval"):
        module.eval()
        module.requires_grad_(False)
    return module

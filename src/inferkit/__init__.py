"""inferkit: run trained Stable Diffusion family image models from Python, offline, typed.

Example:
    >>> import inferkit
    >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
    >>> result = model.infer("a lighthouse at dusk", steps=2, seed=7, progress=False)
    >>> result.images[0].seed, result.params.scheduler
    (7, 'pndm')

"""

from __future__ import annotations

from importlib import metadata as _metadata

from inferkit import testing
from inferkit.errors import (
    DeviceOutOfMemoryError,
    DeviceUnavailableError,
    InferenceCancelled,
    InferkitError,
    IntegrityError,
    InvalidParameterError,
    LoraError,
    MissingExtraError,
    ModelClosedError,
    ModelNotFoundError,
    NumericalError,
    OfflineError,
    UnknownSchedulerError,
    UnsupportedModelError,
)
from inferkit.fast_policy import FastPolicy
from inferkit.loaders import (
    Components,
    Loader,
    LoadOptions,
    register_loader,
    registered_loaders,
    unregister_loader,
)
from inferkit.loaders.single_file import CheckpointInfo, inspect_file
from inferkit.lora import LoraInfo
from inferkit.metadata import ImageMetadata, read_metadata
from inferkit.model import Model
from inferkit.params import GenerationParams, ResolvedParams
from inferkit.policy import DevicePolicy, ExecutionPlan, Policy
from inferkit.results import (
    GeneratedImage,
    InferenceResult,
    LoadTimings,
    ModelInfo,
    StepInfo,
    Timings,
)
from inferkit.schedulers import (
    SamplerChoice,
    SamplerSpec,
    register_scheduler,
    resolve_scheduler,
    samplers,
)

try:
    __version__ = _metadata.version("inferkit")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "CheckpointInfo",
    "Components",
    "DeviceOutOfMemoryError",
    "DeviceUnavailableError",
    "DevicePolicy",
    "ExecutionPlan",
    "FastPolicy",
    "GeneratedImage",
    "GenerationParams",
    "ImageMetadata",
    "InferenceCancelled",
    "InferenceResult",
    "InferkitError",
    "IntegrityError",
    "InvalidParameterError",
    "LoadOptions",
    "LoraError",
    "LoraInfo",
    "MissingExtraError",
    "LoadTimings",
    "Loader",
    "Model",
    "ModelClosedError",
    "ModelInfo",
    "ModelNotFoundError",
    "NumericalError",
    "OfflineError",
    "Policy",
    "ResolvedParams",
    "SamplerChoice",
    "SamplerSpec",
    "StepInfo",
    "Timings",
    "UnknownSchedulerError",
    "UnsupportedModelError",
    "__version__",
    "inspect_file",
    "registered_loaders",
    "read_metadata",
    "register_loader",
    "register_scheduler",
    "resolve_scheduler",
    "samplers",
    "testing",
    "unregister_loader",
]

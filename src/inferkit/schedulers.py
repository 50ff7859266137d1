"""The sampler registry: canonical names, AUTOMATIC1111 and ComfyUI aliases, sigma schedules.

A *sampler* is a diffusers scheduler class plus options (``DPM++ 2M SDE`` is
``DPMSolverMultistepScheduler`` with ``algorithm_type="sde-dpmsolver++"``). A *schedule* picks
the noise levels: ``normal`` (the model's own spacing), ``karras``, ``exponential`` or ``beta``.
A scheduler is always built from the model's own scheduler config, so training settings such as
the beta schedule and prediction type carry over.

Names are matched after normalisation (case, spaces, ``+`` and ``-`` do not matter), so
``"DPM++ 2M Karras"``, ``"dpmpp_2m_karras"`` and ``"dpmpp_2m"`` with ``schedule="karras"`` all
mean the same sampler.

Example:
    >>> import inferkit
    >>> inferkit.resolve_scheduler("DPM++ 2M Karras").name
    'dpmpp_2m_karras'
    >>> inferkit.resolve_scheduler("euler_ancestral").label
    'Euler a'

"""

from __future__ import annotations

import difflib
import inspect
import re
import threading
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

import attrs

from inferkit.errors import InvalidParameterError, UnknownSchedulerError

__all__ = [
    "SCHEDULES",
    "SD_NOISE_SCHEDULE",
    "SamplerChoice",
    "SamplerSpec",
    "build_scheduler",
    "normalize_name",
    "register_scheduler",
    "resolve_scheduler",
    "sampler_for_config",
    "samplers",
]

SD_NOISE_SCHEDULE: Mapping[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
"""The noise schedule every Stable Diffusion 1.x/2.x/XL model was trained with."""

SCHEDULES: tuple[str, ...] = ("normal", "karras", "exponential", "beta")
"""Sigma schedules a sampler may support, in the order ``inferkit schedulers`` prints them."""

_SCHEDULE_LABELS = {"karras": "Karras", "exponential": "Exponential", "beta": "Beta"}


def _freeze(
    options: Mapping[str, Any] | tuple[tuple[str, Any], ...],
) -> tuple[tuple[str, Any], ...]:
    items = options.items() if isinstance(options, Mapping) else options
    return tuple(sorted(items))


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class SamplerSpec:
    """One registered sampler.

    Attributes:
        name: canonical snake_case name (``"dpmpp_2m"``).
        label: the name AUTOMATIC1111 shows (``"DPM++ 2M"``).
        scheduler_class: the diffusers scheduler class name.
        options: config values set on top of the model's scheduler config.
        aliases: other names users type (ComfyUI's ``"dpmpp_2m"``, old A1111 ``"k_dpmpp_2m"``).
        batch_invariant: whether images in one batch are independent of each other. Samplers
            whose noise is shared across a batch (DPM++ SDE's Brownian tree) run image by image.

    Example:
        >>> spec = SamplerSpec("euler", "Euler", "EulerDiscreteScheduler")
        >>> spec.name
        'euler'

    """

    name: str
    label: str
    scheduler_class: str
    options: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_freeze)
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    batch_invariant: bool = True

    def scheduler_type(self) -> type[Any]:
        """Return the diffusers scheduler class (imported on first use)."""
        import diffusers

        cls: type[Any] = getattr(diffusers, self.scheduler_class)
        return cls

    def schedules(self) -> tuple[str, ...]:
        """Return the sigma schedules this sampler's class supports.

        Example:
            >>> import inferkit
            >>> inferkit.resolve_scheduler("euler").sampler.schedules()
            ('normal', 'karras', 'exponential', 'beta')

        """
        params = inspect.signature(self.scheduler_type().__init__).parameters
        return ("normal", *(s for s in SCHEDULES[1:] if f"use_{s}_sigmas" in params))


@attrs.frozen
class SamplerChoice:
    """A resolved sampler and schedule, with the canonical name recorded in results.

    Example:
        >>> import inferkit
        >>> choice = inferkit.resolve_scheduler("Euler", schedule="karras")
        >>> choice.name, choice.label
        ('euler_karras', 'Euler Karras')

    """

    sampler: SamplerSpec
    schedule: str = "normal"

    @property
    def name(self) -> str:
        """Canonical name: the sampler name, plus ``_<schedule>`` unless the schedule is normal."""
        if self.schedule == "normal":
            return self.sampler.name
        return f"{self.sampler.name}_{self.schedule}"

    @property
    def schedule_label(self) -> str | None:
        """AUTOMATIC1111's "Schedule type" (``"Karras"``), or ``None`` for the normal one."""
        return _SCHEDULE_LABELS.get(self.schedule)

    @property
    def label(self) -> str:
        """AUTOMATIC1111-style label, e.g. ``"DPM++ 2M Karras"``."""
        if self.schedule_label is None:
            return self.sampler.label
        return f"{self.sampler.label} {self.schedule_label}"


_BUILTIN: tuple[SamplerSpec, ...] = (
    SamplerSpec("euler", "Euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
    SamplerSpec(
        "euler_a",
        "Euler a",
        "EulerAncestralDiscreteScheduler",
        aliases=("euler_ancestral", "k_euler_a", "k_euler_ancestral"),
    ),
    SamplerSpec("heun", "Heun", "HeunDiscreteScheduler", aliases=("k_heun",)),
    SamplerSpec("lms", "LMS", "LMSDiscreteScheduler", aliases=("k_lms",)),
    SamplerSpec("dpm2", "DPM2", "KDPM2DiscreteScheduler", aliases=("dpm_2", "k_dpm_2")),
    SamplerSpec(
        "dpm2_a",
        "DPM2 a",
        "KDPM2AncestralDiscreteScheduler",
        aliases=("dpm_2_ancestral", "dpm2_ancestral", "k_dpm_2_a", "k_dpm_2_ancestral"),
    ),
    SamplerSpec(
        "dpmpp_2m",
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        options={"algorithm_type": "dpmsolver++", "solver_order": 2},
        aliases=("k_dpmpp_2m", "dpm_solver_multistep"),
    ),
    SamplerSpec(
        "dpmpp_2m_sde",
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        options={"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        aliases=("k_dpmpp_2m_sde",),
    ),
    SamplerSpec(
        "dpmpp_sde",
        "DPM++ SDE",
        "DPMSolverSDEScheduler",
        aliases=("k_dpmpp_sde",),
        batch_invariant=False,
    ),
    # diffusers' single-step solver adds no noise: this is DPM++ 2S, not A1111's "2S a".
    SamplerSpec(
        "dpmpp_2s",
        "DPM++ 2S",
        "DPMSolverSinglestepScheduler",
        options={"algorithm_type": "dpmsolver++", "solver_order": 2},
        aliases=("k_dpmpp_2s",),
    ),
    SamplerSpec("ddim", "DDIM", "DDIMScheduler", options={"set_alpha_to_one": False}),
    SamplerSpec(
        "pndm", "PLMS", "PNDMScheduler", options={"skip_prk_steps": True}, aliases=("plms",)
    ),
    SamplerSpec("unipc", "UniPC", "UniPCMultistepScheduler", aliases=("uni_pc", "uni_pc_bh2")),
    SamplerSpec("deis", "DEIS", "DEISMultistepScheduler"),
    SamplerSpec("lcm", "LCM", "LCMScheduler"),
)

_registry: dict[str, SamplerSpec] = {}
_aliases: dict[str, str] = {}
_lock = threading.Lock()
_plugin_lock = threading.Lock()
_plugins_loaded = False


def normalize_name(name: str) -> str:
    """Normalise a sampler name the way the registry compares names.

    Example:
        >>> normalize_name("DPM++ 2M Karras")
        'dpmpp_2m_karras'
        >>> normalize_name("Euler a")
        'euler_a'

    """
    s = name.strip().lower().replace("++", "pp").replace("+", "p")
    s = re.sub(r"[^a-z0-9]+", "_", s)
    return s.strip("_")


def register_scheduler(spec: SamplerSpec, *, replace: bool = False) -> None:
    """Add a sampler to the registry under its name, label and aliases.

    Args:
        spec: the sampler to add.
        replace: allow replacing a sampler already registered under one of these names.

    Raises:
        InvalidParameterError: a name is taken and ``replace`` is false.

    Example:
        >>> import inferkit
        >>> inferkit.register_scheduler(
        ...     inferkit.SamplerSpec("ddpm", "DDPM", "DDPMScheduler"), replace=True)
        >>> inferkit.resolve_scheduler("DDPM").name
        'ddpm'

    """
    keys = {normalize_name(n) for n in (spec.name, spec.label, *spec.aliases)}
    with _lock:
        if not replace:
            for key in keys:
                owner = _aliases.get(key)
                if owner is not None and owner != spec.name:
                    raise InvalidParameterError(
                        "spec", spec.name, f"the name {key!r} already belongs to sampler {owner!r}"
                    )
        _registry[spec.name] = spec
        for key in keys:
            _aliases[key] = spec.name


for _spec in _BUILTIN:
    register_scheduler(_spec)


def _load_plugins() -> None:
    """Register samplers that installed packages declare under the ``inferkit.schedulers`` group."""
    global _plugins_loaded
    with _plugin_lock:
        if _plugins_loaded:
            return
        for ep in metadata.entry_points(group="inferkit.schedulers"):
            try:
                spec = ep.load()
                if isinstance(spec, SamplerSpec):
                    register_scheduler(spec)
            except Exception as e:  # a broken plugin must not break sampler lookup
                warnings.warn(f"inferkit sampler plugin {ep.name!r} failed: {e}", stacklevel=2)
        _plugins_loaded = True


def samplers() -> tuple[SamplerSpec, ...]:
    """Return every registered sampler, built-ins first.

    Example:
        >>> import inferkit
        >>> len(inferkit.samplers()) >= 12
        True

    """
    _load_plugins()
    return tuple(_registry.values())


def _lookup(key: str) -> SamplerSpec | None:
    name = _aliases.get(key)
    return _registry[name] if name is not None else None


def _suggest(key: str) -> tuple[str, ...]:
    """Return registered names close to ``key``, keeping a schedule suffix the user typed."""
    base, suffix = key, ""
    for candidate in SCHEDULES[1:]:
        if key.endswith("_" + candidate):
            base, suffix = key[: -len(candidate) - 1], "_" + candidate
    matches = difflib.get_close_matches(base, list(_aliases), n=3, cutoff=0.5)
    return tuple(dict.fromkeys(_aliases[m] + suffix for m in matches))


def resolve_scheduler(name: str, schedule: str | None = None) -> SamplerChoice:
    """Turn a user's sampler name (and optional schedule) into a :class:`SamplerChoice`.

    The schedule may be part of the name (``"DPM++ 2M Karras"``, ``"dpmpp_2m_karras"``) or given
    separately, as ComfyUI does (``"dpmpp_2m"``, ``schedule="karras"``).

    Raises:
        UnknownSchedulerError: no sampler has this name; the message lists close matches.
        InvalidParameterError: the schedule is unknown or this sampler does not support it.

    Example:
        >>> import inferkit
        >>> inferkit.resolve_scheduler("dpmpp_2m", "karras").label
        'DPM++ 2M Karras'

    """
    _load_plugins()
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterError("scheduler", name, "must be a non-empty sampler name")
    key = normalize_name(name)
    spec = _lookup(key)
    suffix: str | None = None
    if spec is None:
        for candidate in SCHEDULES:
            if key.endswith("_" + candidate):
                spec = _lookup(key[: -len(candidate) - 1])
                if spec is not None:
                    suffix = candidate
                    break
    if spec is None:
        raise UnknownSchedulerError(name, _suggest(key))
    chosen = schedule.strip().lower() if isinstance(schedule, str) else None
    if chosen is not None and suffix is not None and chosen != suffix:
        raise InvalidParameterError(
            "schedule", schedule, f"conflicts with {suffix!r} in scheduler={name!r}; give one"
        )
    chosen = chosen or suffix or "normal"
    if chosen not in SCHEDULES:
        raise InvalidParameterError("schedule", schedule, f"must be one of {', '.join(SCHEDULES)}")
    supported = spec.schedules()
    if chosen not in supported:
        raise InvalidParameterError(
            "schedule",
            chosen,
            f"sampler {spec.name!r} supports only {', '.join(supported)}",
        )
    return SamplerChoice(spec, chosen)


def sampler_for_config(config: Mapping[str, Any]) -> SamplerChoice | None:
    """Find the registered sampler that a model's saved scheduler config describes, if any.

    Example:
        >>> sampler_for_config({"_class_name": "EulerDiscreteScheduler"}).name
        'euler'

    """
    cls_name = config.get("_class_name")
    for spec in samplers():
        if spec.scheduler_class != cls_name:
            continue
        if any(config.get(k, v) != v for k, v in spec.options if k != "solver_order"):
            continue
        schedule = next((s for s in SCHEDULES[1:] if config.get(f"use_{s}_sigmas")), "normal")
        return SamplerChoice(spec, schedule)
    return None


def build_scheduler(
    choice: SamplerChoice, base_config: Mapping[str, Any], *, noise_seed: int | None = None
) -> Any:
    """Build a fresh diffusers scheduler for ``choice`` on a model's own scheduler config.

    Args:
        choice: the resolved sampler and schedule.
        base_config: the model's scheduler config (training betas, prediction type, spacing).
        noise_seed: seed for samplers with their own noise source (DPM++ SDE's Brownian tree).

    Example:
        >>> import inferkit
        >>> cfg = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
        ...        "beta_start": 0.00085, "beta_end": 0.012}
        >>> type(build_scheduler(inferkit.resolve_scheduler("Euler a"), cfg)).__name__
        'EulerAncestralDiscreteScheduler'

    """
    cls = choice.sampler.scheduler_type()
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    for schedule in SCHEDULES[1:]:
        config.pop(f"use_{schedule}_sigmas", None)
    config.update(dict(choice.sampler.options))
    if choice.schedule != "normal":
        config[f"use_{choice.schedule}_sigmas"] = True
    if (
        noise_seed is not None
        and "noise_sampler_seed" in inspect.signature(cls.__init__).parameters
    ):
        config["noise_sampler_seed"] = noise_seed % 2**63
    return cls.from_config(config)

"""The :class:`Model`: load once with a loader and a policy, then ``infer`` many times."""

from __future__ import annotations

import difflib
import gc
import os
import re
import sys
import threading
import time
import traceback
import warnings
from typing import Any

import attrs
import torch

from inferkit._quiet import quiet_libraries
from inferkit.errors import (
    DeviceOutOfMemoryError,
    InvalidParameterError,
    ModelClosedError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from inferkit.generation import StepCallback, run
from inferkit.hashing import files_sha256
from inferkit.images import fingerprint, fit, fit_mask, to_mask, to_rgb
from inferkit.loaders import Components, LoadOptions, select_loader
from inferkit.lora import LoraAdapter, LoraInfo, LoraPatcher, read_lora
from inferkit.params import GenerationParams, ResolvedParams
from inferkit.pipelines import (
    build_img2img_pipeline,
    build_inpaint_pipeline,
    build_pipeline,
    vae_scale_factor,
)
from inferkit.policy import DevicePolicy, ExecutionPlan, Policy
from inferkit.prompt_weights import has_weights
from inferkit.prompts import token_count
from inferkit.results import (
    GeneratedImage,
    InferenceResult,
    LoadTimings,
    ModelInfo,
    image_record,
)
from inferkit.schedulers import (
    SamplerChoice,
    SamplerSpec,
    build_scheduler,
    normalize_name,
    resolve_scheduler,
    sampler_for_config,
)
from inferkit.seeds import draw_seed, image_seeds

__all__ = ["Model"]

_PARAM_NAMES = tuple(a.name for a in attrs.fields(GenerationParams))
# AUTOMATIC1111 prompt syntax inferkit does not interpret, so that a pasted prompt says so.
_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):[^>]*>", re.IGNORECASE)
_PROMPT_EDITING = re.compile(r"(?<!\\)\[([^\[\]]*(:[^\[\]]*:|\|)[^\[\]]*|[^\[\]:]*:\s*[\d.]+\s*)\]")


def _version() -> str:
    from inferkit import __version__

    return __version__


def _default_choice(config: dict[str, Any], source: str) -> SamplerChoice:
    found = sampler_for_config(config)
    if found is not None:
        return found
    cls_name = str(config.get("_class_name", ""))
    import diffusers

    if not hasattr(diffusers, cls_name):
        raise UnsupportedModelError(
            f"{source!r} names scheduler class {cls_name!r}, which diffusers does not have; "
            "pass scheduler='euler' (or another sampler) to Model.load",
            source=source,
        )
    return SamplerChoice(SamplerSpec(normalize_name(cls_name), cls_name, cls_name))


class Model:
    """A loaded text-to-image model. Reusable, thread-safe, and closable.

    Build one with :meth:`Model.load`; call :meth:`infer` as often as you like. Calls from
    several threads are serialised, so each gets the result it would get alone.

    Example:
        >>> import inferkit
        >>> with inferkit.Model.load(inferkit.testing.tiny_model_path("sd1")) as model:
        ...     result = model.infer("a lighthouse at dusk", steps=2, seed=7, progress=False)
        >>> result.images[0].seed
        7

    """

    def __init__(
        self,
        components: Components,
        pipeline: Any,
        plan: ExecutionPlan,
        default_scheduler: SamplerChoice,
        policy: Policy | None = None,
    ) -> None:
        """Wrap loaded parts; use :meth:`Model.load` rather than calling this directly."""
        self._s = _Shared(components, pipeline, plan, default_scheduler, policy)
        self._loras: tuple[LoraAdapter, ...] = ()
        self._root = True
        self._view_closed = False
        unet = components.modules["unet"]
        vae = components.modules["vae"]
        self._vae_factor = vae_scale_factor(vae)
        self._latent_channels = int(unet.config.out_channels)
        self._native = int(unet.config.sample_size) * self._vae_factor
        self._parameters = sum(
            p.numel()
            for m in components.modules.values()
            if isinstance(m, torch.nn.Module)
            for p in m.parameters()
        )

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        scheduler: str | None = None,
        policy: Policy | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        allow_pickle: bool = False,
        strict: bool = True,
        verify: bool = False,
        **loader_options: Any,
    ) -> Model:
        """Load a model from a diffusers folder or a hub repo id (from the local cache).

        Args:
            source: a diffusers folder, or ``"org/name"`` resolved through the hub cache.
            device: ``"auto"`` or a device; passed to the default policy.
            dtype: ``"auto"`` or a dtype name; passed to the default policy.
            scheduler: the sampler used when a call names none (default: the model's own).
            policy: a :class:`Policy` object; default :class:`DevicePolicy`.
            revision: hub branch, tag or commit to load (repo ids only).
            local_files_only: ``True`` never downloads; ``None`` follows ``HF_HUB_OFFLINE``.
            allow_pickle: accept ``.ckpt``/``.pt``/``.pth``/``.bin`` checkpoints, read only with
                torch's restricted weights-only unpickler (never full unpickling).
            strict: weights that do not fit the network (missing, unexpected, wrong shape)
                are errors; ``False`` sets missing ones to zero, ignores unexpected ones, and
                records each problem in ``model.load_warnings`` and every result's warnings.
            verify: check every file of a hub-cache model against the sha256 (or git hash)
                its cache entry is named by, before loading.
            **loader_options: passed to the loader (for loaders that take extra options).

        Raises:
            ModelNotFoundError: the source does not exist.
            OfflineError: a repo id is not cached and downloading is off.
            UnsupportedModelError: the source is not a model inferkit runs.
            InvalidParameterError: an argument is invalid.
            DeviceUnavailableError: the device or dtype cannot be used here.

        Example:
            >>> import inferkit
            >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"),
            ...                             device="cpu", scheduler="DPM++ 2M Karras")
            >>> model.info.default_scheduler
            'dpmpp_2m_karras'

        """
        started = time.perf_counter()
        if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
            raise InvalidParameterError(
                "source", source, "must be a path to a model or a hub repo id ('org/name')"
            )
        if revision is not None and (not isinstance(revision, str) or not revision.strip()):
            raise InvalidParameterError("revision", revision, "must be a branch, tag or commit")
        if local_files_only is not None and not isinstance(local_files_only, bool):
            raise InvalidParameterError("local_files_only", local_files_only, "must be a bool")
        for name, flag in (("allow_pickle", allow_pickle), ("strict", strict), ("verify", verify)):
            if not isinstance(flag, bool):
                raise InvalidParameterError(name, flag, "must be True or False")
        choice = resolve_scheduler(scheduler) if scheduler is not None else None
        vae = loader_options.pop("vae", None)
        if vae is not None and not isinstance(vae, (str, os.PathLike)):
            raise InvalidParameterError("vae", vae, "must be a path to a VAE file or folder")
        the_policy = _policy(policy, device, dtype)
        plan = the_policy.plan()
        options = LoadOptions(
            dtype=plan.dtype,
            revision=revision,
            local_files_only=local_files_only,
            vae=vae,
            extra=loader_options,
            device=plan.device
            if not {"model_offload", "sequential_offload"} & set(plan.memory)
            else "cpu",
            allow_pickle=allow_pickle,
            strict=strict,
            verify=verify,
        )
        text = os.fspath(source)
        loader = select_loader(text, options)
        if verify and not getattr(loader, "verifies", False):
            raise InvalidParameterError(
                "verify",
                verify,
                f"works for hub repo ids, whose cache names each file by its hash; the "
                f"{loader.name!r} loader has nothing to check {text!r} against",
            )
        accepted = frozenset(getattr(loader, "options", frozenset()))
        for name in loader_options:
            if name not in accepted:
                known = ", ".join(sorted(accepted)) or "none"
                raise InvalidParameterError(
                    name,
                    loader_options[name],
                    f"is not an option of the {loader.name!r} loader (its options: {known})",
                )
        with warnings.catch_warnings(), quiet_libraries():
            warnings.simplefilter("ignore", FutureWarning)
            read_from = time.perf_counter()
            components = loader.load(text, options)
            build_from = time.perf_counter()
            if vae is not None:
                components = _replace_vae(components, vae, plan.dtype)
            plan = the_policy.finalize(plan, components.modules["vae"].config)
            config = dict(components.scheduler_config)
            default = choice or _default_choice(config, text)
            pipeline = build_pipeline(components, build_scheduler(default, config))
            pipeline.set_progress_bar_config(disable=True)
            place_from = time.perf_counter()
            the_policy.apply(pipeline, plan)
            _wait_for(plan.device)  # ready means the copies to the device have landed
        model = cls(components, pipeline, plan, default, the_policy)
        done = time.perf_counter()
        model._s.load_timings = LoadTimings(
            prepare=read_from - started,
            read=build_from - read_from,
            build=place_from - build_from,
            place=done - place_from,
            total=done - started,
        )
        return model

    @property
    def pipeline(self) -> Any:
        """The underlying diffusers pipeline (an escape hatch; inferkit may replace it).

        A model and its LoRA views share one pipeline; asking for it merges this view's
        adapters (or puts the base weights back), so its weights are this model's.
        """
        with self._s.lock:
            self._check_open()
            self._s.patcher.activate(self._s.components.modules, self._loras)
            return self._s.pipeline

    @property
    def plan(self) -> ExecutionPlan:
        """The policy's decisions for this model."""
        return self._s.plan

    @property
    def sha256(self) -> str:
        """The sha256 of the model's files (computed on first use, then remembered)."""
        with self._s.lock:
            if self._s.sha256 is None:
                files = self._s.components.files
                try:
                    self._s.sha256 = files_sha256(files) if files else "0" * 64
                except OSError as e:
                    raise ModelNotFoundError(
                        f"cannot hash the files of {self._s.components.name!r} ({e}); were they "
                        "moved or deleted after loading? Load the model again",
                        source=self._s.components.source,
                    ) from e
            return self._s.sha256

    @property
    def info(self) -> ModelInfo:
        """What this model is: architecture, components, dtype, device, size, hash, evidence."""
        c = self._s.components
        return ModelInfo(
            name=c.name,
            source=c.source,
            loader=c.loader,
            architecture=c.architecture,
            variant=c.variant,
            prediction_type=c.prediction_type,
            components=tuple(c.modules),
            parameters=self._parameters,
            device=self._s.plan.device,
            dtype=self._s.plan.dtype_name,
            vae_dtype=self._s.plan.vae_dtype_name,
            memory=self._s.plan.memory,
            default_scheduler=self._s.default_scheduler.name,
            hash=self.sha256[:10],
            sha256=self.sha256,
            evidence=c.evidence,
            load_timings=self._s.load_timings,
            decisions=self._s.plan.reasons,
        )

    @property
    def native_size(self) -> int:
        """The image side length the model was trained for, in pixels."""
        return self._native

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell; image sizes must be multiples of it."""
        return self._vae_factor

    def _check_open(self) -> None:
        if self._s.closed or self._view_closed:
            what = "LoRA view of model" if self._view_closed else "model"
            raise ModelClosedError(
                f"{what} {self._s.components.name!r} was closed; load it again with Model.load"
            )

    @property
    def _components(self) -> Components:
        return self._s.components

    @property
    def loras(self) -> tuple[LoraInfo, ...]:
        """The LoRA adapters this model applies, in the order they were added."""
        return tuple(a.info for a in self._loras)

    def with_lora(
        self, source: str | os.PathLike[str], scale: float = 1.0, *, strict: bool = False
    ) -> Model:
        """Return a view of this model with the LoRA file ``source`` applied at ``scale``.

        The view shares this model's weights and memory: its :meth:`infer` merges its adapters
        into the weights, and this model's own :meth:`infer` puts the originals back, bit for
        bit. Views stack (``m.with_lora(a).with_lora(b)``); closing a view leaves this model
        open. kohya/sd-scripts, diffusers/PEFT and LyCORIS (LoCon, LoHa, LoKr) files are read.

        Args:
            source: a ``.safetensors`` LoRA file, or a packaged one such as
                ``"inferkit:shapes-night"`` (for the shapes model: every background black).
            scale: how strongly to apply it: 1.0 as trained, 0 not at all, negative inverted.
            strict: a layer of the file that this model lacks is an error; by default such
                layers are skipped, and each result's warnings say how many.

        Raises:
            LoraError: the file matches none of this model's layers, has the wrong shapes for
                them (a LoRA for another family), or is of a kind inferkit cannot merge.
            ModelNotFoundError: no such file.
            UnsupportedModelError: the file is not a safetensors file.

        Example:
            >>> import inferkit, tempfile
            >>> base = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> path = inferkit.testing.write_lora(tempfile.mkdtemp(), base, "kohya")
            >>> styled = base.with_lora(path, scale=0.8)
            >>> styled.loras[0].scale, base.loras
            (0.8, ())

        """
        if not isinstance(strict, bool):
            raise InvalidParameterError("strict", strict, "must be True or False")
        with self._s.lock:
            self._check_open()
            if "sequential_offload" in self._s.plan.memory:
                raise InvalidParameterError(
                    "lora",
                    os.fspath(source) if isinstance(source, os.PathLike) else source,
                    "cannot be merged while the policy offloads weights layer by layer "
                    "(memory='sequential_offload'); use 'model_offload' instead",
                )
            adapter = read_lora(source, self._s.components.modules, scale, strict=strict)
        return self._view((*self._loras, adapter))

    def without_loras(self) -> Model:
        """Return a view of the base model, with no LoRA applied (this model's own weights).

        Example:
            >>> import inferkit
            >>> base = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> base.without_loras().loras
            ()

        """
        self._check_open()
        return self._view(())

    def _view(self, loras: tuple[LoraAdapter, ...]) -> Model:
        view = object.__new__(Model)
        view.__dict__.update(self.__dict__)
        view._loras = loras
        view._root = False
        view._view_closed = False
        return view

    def resolve(self, params: GenerationParams) -> tuple[ResolvedParams, SamplerChoice]:
        """Fill in defaults and check ``params`` against this model, without generating.

        Raises:
            InvalidParameterError: a size is not a multiple of the VAE factor.

        Example:
            >>> import inferkit
            >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> resolved, _ = model.resolve(inferkit.GenerationParams("a cat", seed=1))
            >>> resolved.width, resolved.scheduler
            (64, 'pndm')

        """
        resolved, choice, _ = self._resolve(params)
        return resolved, choice

    def _resolve(self, params: GenerationParams) -> tuple[ResolvedParams, SamplerChoice, _Start]:
        """Resolve ``params``; also return the init image and mask fitted to the size."""
        f = self._vae_factor
        original = to_rgb(params.init_image) if params.init_image is not None else None
        self._check_kind(params, original is not None)
        mask = to_mask(params.mask) if params.mask is not None else None
        init, note = None, None
        if original is not None and params.width is None and params.height is None:
            init, note = fit(original, None, f)
            sizes = {"width": init.width, "height": init.height}
        else:
            sizes = {
                "width": params.width or self._native,
                "height": params.height or self._native,
            }
        for name, value in sizes.items():
            if value % f:
                raise InvalidParameterError(
                    name,
                    value,
                    f"must be a positive multiple of {f}, this model's VAE factor "
                    f"(nearest: {max(f, value // f * f)} or {value // f * f + f})",
                )
        if params.scheduler is not None:
            choice = resolve_scheduler(params.scheduler, params.schedule)
        else:
            choice = self._s.default_scheduler
        if original is not None and init is None:
            init, note = fit(original, (sizes["width"], sizes["height"]), f)
        if init is not None:
            if round(params.steps * params.strength) < 1:
                raise InvalidParameterError(
                    "strength",
                    params.strength,
                    f"leaves no step to run: round(steps * strength) is 0 with steps="
                    f"{params.steps}; raise strength or steps",
                )
            if params.variation_strength > 0 and mask is not None:
                raise InvalidParameterError(
                    "variation_strength",
                    params.variation_strength,
                    "is not supported with mask (inpainting) yet; leave it at 0",
                )
        if mask is not None:
            assert original is not None and init is not None  # _check_kind ensured it
            mask = fit_mask(mask, original.size, init.size)
            if params.guidance_rescale > 0 and self._s.components.architecture != "sdxl":
                raise InvalidParameterError(
                    "guidance_rescale",
                    params.guidance_rescale,
                    "is not supported when inpainting SD 1.x/2.x models (diffusers' inpainting "
                    "pipeline has no rescale); leave it at 0",
                )
        seed = params.seed if params.seed is not None else draw_seed()
        variation_seed = params.variation_seed
        if variation_seed is None and params.variation_strength > 0:
            variation_seed = draw_seed()
        if params.variation_strength == 0:
            variation_seed = None  # no blend: the image is the seed's alone
        resolved = ResolvedParams(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            steps=params.steps,
            seed=seed,
            seeds=image_seeds(seed, params.images),
            guidance=float(params.guidance),
            guidance_rescale=float(params.guidance_rescale),
            width=sizes["width"],
            height=sizes["height"],
            images=params.images,
            scheduler=choice.name,
            scheduler_label=choice.label,
            noise=params.noise,
            device=self._s.plan.device,
            dtype=self._s.plan.dtype_name,
            vae_dtype=self._s.plan.vae_dtype_name,
            memory=self._s.plan.memory,
            denoising_steps=params.steps,
            variation_seed=variation_seed,
            variation_strength=float(params.variation_strength),
            prompt_tokens=self._tokens(params.prompt, params.prompt_weighting),
            negative_prompt_tokens=self._tokens(params.negative_prompt, params.prompt_weighting),
            prompt_weighting=params.prompt_weighting,
            strength=float(params.strength) if init is not None else None,
            init_image_sha256=fingerprint(init) if init is not None else None,
            mask_sha256=fingerprint(mask) if mask is not None else None,
            loras=self.loras,
            mask_blur=params.mask_blur if mask is not None else None,
            keep_unmasked=params.keep_unmasked if mask is not None else None,
        )
        return resolved, choice, _Start(init, mask, note)

    def _check_kind(self, params: GenerationParams, has_init: bool) -> None:
        """Refuse a call this kind of model cannot run, saying what it needs instead."""
        c = self._s.components
        if params.mask is not None and not has_init:
            raise InvalidParameterError(
                "mask", "a mask", "needs init_image= too: the image whose masked area to repaint"
            )
        if c.architecture == "sdxl_refiner":
            if not has_init:
                raise InvalidParameterError(
                    "init_image",
                    None,
                    f"must be an image: {c.name!r} is an SDXL refiner, which refines an image "
                    "(pass init_image= and a strength such as 0.3) rather than making one from "
                    "noise",
                )
            if params.mask is not None:
                raise InvalidParameterError(
                    "mask", "a mask", f"is not supported with the SDXL refiner {c.name!r}"
                )
            return
        if c.variant == "inpainting":
            if params.mask is None:
                raise InvalidParameterError(
                    "mask",
                    None,
                    f"must be a mask: {c.name!r} is an inpainting checkpoint (9-channel UNet), "
                    "which repaints the masked area of an image; pass init_image= and mask=",
                )
            return
        if c.variant != "base":
            raise UnsupportedModelError(
                f"{c.name!r} is a model of kind {c.variant!r}, which needs its own pipeline; "
                "inferkit runs base, inpainting and SDXL refiner models",
                source=c.source,
            )

    def _tokens(self, text: str, weighting: bool) -> int:
        modules = self._s.components.modules
        tokenizer = modules.get("tokenizer") or modules.get("tokenizer_2")
        return token_count(tokenizer, text, weighting) if tokenizer is not None else 0

    def infer(
        self,
        prompt: str | GenerationParams,
        /,
        *,
        callback: StepCallback | None = None,
        progress: bool | None = None,
        **params: Any,
    ) -> InferenceResult:
        """Generate images from a prompt (or a prepared :class:`GenerationParams`).

        Args:
            prompt: the prompt, or a :class:`GenerationParams`; keyword arguments then override
                its fields.
            callback: called with a :class:`StepInfo` after each step; return ``False`` (or raise
                :class:`InferenceCancelled`) to stop.
            progress: show a progress bar; default: when stderr is a terminal.
            **params: any :class:`GenerationParams` field (``steps``, ``seed``, ``guidance``, ...).

        Raises:
            InvalidParameterError: a parameter is invalid (before any model work starts).
            InferenceCancelled: the callback stopped the run.
            NumericalError: the latents became NaN or infinite (no NaN image is returned).
            DeviceOutOfMemoryError: out of memory, and the policy had no fallback left.
            ModelClosedError: the model was closed.

        Example:
            >>> import inferkit
            >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> r = model.infer("a cat", steps=2, seed=3, images=2, scheduler="euler_a",
            ...                 progress=False)
            >>> r.seeds, r.params.scheduler_label
            ((3, 4), 'Euler a')

        """
        request = _make_params(prompt, params)
        resolved, choice, start = self._resolve(request)
        if callback is not None and not callable(callback):
            raise InvalidParameterError("callback", callback, "must be callable or None")
        show = sys.stderr.isatty() if progress is None else bool(progress)
        with self._s.lock:
            self._check_open()
            notes = list(self._warnings(resolved))
            if start.note is not None:
                notes.append(start.note)
            tried: list[str] = []
            while True:
                failure: torch.OutOfMemoryError | None = None
                try:
                    self._s.patcher.activate(self._s.components.modules, self._loras)
                    out = run(
                        self._s.pipeline,
                        architecture=self._s.components.architecture,
                        plan=self._s.plan,
                        params=resolved,
                        choice=choice,
                        scheduler_config=dict(self._s.components.scheduler_config),
                        latent_channels=self._latent_channels,
                        vae_factor=self._vae_factor,
                        callback=callback,
                        show_progress=show,
                        init_image=start.init,
                        mask=start.mask,
                        img2img=self._start_pipeline(start),
                    )
                    break
                except torch.OutOfMemoryError as e:
                    failure = e
                # Outside the except block, so the failed attempt's frames can be freed.
                self._fall_back(failure, tried)
                notes.append(
                    f"the device ran out of memory; retried from the first step with "
                    f"{tried[-1]} (kept for later calls)"
                )
            info = self.info
        resolved = attrs.evolve(
            resolved, denoising_steps=out.denoising_steps, memory=self._s.plan.memory
        )
        images = []
        for index, (image, seed) in enumerate(zip(out.images, resolved.seeds, strict=True)):
            record, text = image_record(
                params=resolved,
                choice=choice,
                model=info,
                seed=seed,
                index=index,
                version=_version(),
            )
            images.append(
                GeneratedImage(image=image, seed=seed, index=index, metadata=record, infotext=text)
            )
        return InferenceResult(
            images=tuple(images),
            params=resolved,
            timings=out.timings,
            model=info,
            warnings=(*notes, *out.notes),
        )

    def _fall_back(self, error: BaseException | None, tried: list[str]) -> None:
        """Ask the policy for the next memory fallback after ``error``, or raise."""
        if error is not None and error.__traceback__ is not None:
            # Drop the failed attempt's locals (its activations) but keep the traceback lines.
            traceback.clear_frames(error.__traceback__)
        gc.collect()
        if torch.device(self._s.plan.device).type == "cuda":
            torch.cuda.empty_cache()
        handler = getattr(self._s.policy, "on_out_of_memory", None)
        plan = handler(self._s.pipeline, self._s.plan) if handler is not None else None
        if plan is not None and (
            not isinstance(plan, ExecutionPlan) or len(plan.memory) <= len(self._s.plan.memory)
        ):
            plan = None  # a fallback must add a strategy, or the retry would fail the same way
        if plan is None:
            done = f" after trying {', '.join(tried)}" if tried else ""
            raise DeviceOutOfMemoryError(
                f"{self._s.plan.device} ran out of memory{done}; use smaller images or fewer "
                "images per call, a smaller max_batch, memory='model_offload' (CUDA), or "
                "dtype='float16'",
                tried=tuple(tried),
            ) from error
        tried.append(plan.memory[-1])
        self._s.plan = plan

    def _start_pipeline(self, start: _Start) -> Any:
        """Return the pipeline that starts from ``start``'s image, over the same modules.

        Image-to-image and inpainting pipelines are built on first use; the SDXL refiner's own
        pipeline is already an image-to-image one.
        """
        if start.init is None:
            return None
        if start.mask is not None:
            if self._s.inpaint is None:
                self._s.inpaint = build_inpaint_pipeline(self._s.pipeline, self._s.components)
            return self._s.inpaint
        if self._s.components.architecture == "sdxl_refiner":
            return self._s.pipeline
        if self._s.img2img is None:
            self._s.img2img = build_img2img_pipeline(self._s.pipeline, self._s.components)
        return self._s.img2img

    @property
    def load_warnings(self) -> tuple[str, ...]:
        """Problems with the weights that ``strict=False`` tolerated (empty when strict)."""
        return self._s.components.warnings

    def _warnings(self, params: ResolvedParams) -> tuple[str, ...]:
        notes = [f"load: {w}" for w in self._s.components.warnings]
        for lora in params.loras:
            if lora.unmatched:
                notes.append(
                    f"lora {lora.name!r}: {lora.unmatched} of its layers are not in this model "
                    f"and were skipped ({lora.layers} applied); with_lora(strict=True) refuses"
                )
        for text in (params.prompt, params.negative_prompt):
            if _EXTRA_NETWORK.search(text):
                notes.append(
                    "the prompt's <lora:...> (or <lyco:...>, <hypernet:...>) tags are read as "
                    "text; apply LoRAs with model.with_lora(path, scale) (CLI: --lora PATH:SCALE)"
                )
            if params.prompt_weighting and _PROMPT_EDITING.search(text):
                notes.append(
                    "prompt editing and alternation ([from:to:when], [a|b]) are not supported: "
                    "their brackets are read as weighting (divided by 1.1)"
                )
        if (
            params.prompt_weighting
            and self._s.components.architecture == "sdxl_refiner"
            and (has_weights(params.prompt) or has_weights(params.negative_prompt))
        ):
            notes.append(
                "prompt weighting is not applied by the SDXL refiner: its prompts are encoded "
                "as plain text"
            )
        if params.guidance <= 1 and params.negative_prompt:
            notes.append(
                "negative_prompt is ignored: guidance <= 1 turns classifier-free guidance off"
            )
        return tuple(notes)

    def close(self) -> None:
        """Free the model's memory. Further :meth:`infer` calls raise :class:`ModelClosedError`.

        Closing a LoRA view (from :meth:`with_lora`) closes only the view, and puts the base
        weights back if its adapters were merged; closing the model closes all its views.

        Example:
            >>> import inferkit
            >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
            >>> model.close()
            >>> model.closed
            True

        """
        with self._s.lock:
            if self._s.closed or self._view_closed:
                return
            if not self._root:
                self._view_closed = True
                if self._s.patcher.is_active(self._loras):
                    self._s.patcher.activate(self._s.components.modules, ())
                return
            self._s.closed = True
            device = torch.device(self._s.plan.device)
            self._s.pipeline = None
            self._s.components = attrs.evolve(self._s.components, modules={})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (on this view, or on the model it views)."""
        return self._s.closed or self._view_closed

    def __enter__(self) -> Model:
        """Return the model; it is closed when the ``with`` block ends."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the model."""
        self.close()

    def __repr__(self) -> str:
        """Show the model's name, architecture, device and dtype."""
        c = self._s.components
        state = ", closed" if self.closed else ""
        loras = "".join(f" +{a.info.name}:{a.info.scale:g}" for a in self._loras)
        return (
            f"<inferkit.Model {c.name!r}{loras} {c.architecture} on {self._s.plan.device} "
            f"{self._s.plan.dtype_name}{state}>"
        )


@attrs.define(eq=False)
class _Shared:
    """What a model and its LoRA views share: the modules, pipelines, plan and lock."""

    components: Components
    pipeline: Any
    plan: ExecutionPlan
    default_scheduler: SamplerChoice
    policy: Policy | None
    img2img: Any = None
    inpaint: Any = None
    lock: threading.RLock = attrs.field(factory=threading.RLock)
    closed: bool = False
    sha256: str | None = None
    patcher: LoraPatcher = attrs.field(factory=LoraPatcher)
    load_timings: LoadTimings | None = None


@attrs.frozen
class _Start:
    """What a run starts from besides noise: an init image, a mask, and a note on resizing."""

    init: Any = None
    mask: Any = None
    note: str | None = None


def _wait_for(device: str) -> None:
    """Block until queued work on ``device`` (asynchronous copies) has finished."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def _replace_vae(
    components: Components, source: str | os.PathLike[str], dtype: torch.dtype
) -> Components:
    from inferkit.loaders.vae import load_vae

    vae, files, note = load_vae(source, dtype, components.vae_settings)
    return attrs.evolve(
        components,
        modules={**components.modules, "vae": vae},
        files=(*components.files, *files),
        evidence=(*components.evidence, note),
    )


def _policy(policy: Policy | None, device: str, dtype: str | torch.dtype) -> Policy:
    if policy is None:
        return DevicePolicy(device=device, dtype=dtype)
    if not isinstance(policy, Policy):
        raise InvalidParameterError("policy", policy, "must have plan(), finalize() and apply()")
    if device != "auto" or dtype != "auto":
        cls: Any = type(policy)
        if attrs.has(cls) and {"device", "dtype"} <= attrs.fields_dict(cls).keys():
            changes = {k: v for k, v in {"device": device, "dtype": dtype}.items() if v != "auto"}
            evolved: Policy = attrs.evolve(policy, **changes)  # type: ignore[misc]
            return evolved
        raise InvalidParameterError(
            "device" if device != "auto" else "dtype",
            device if device != "auto" else dtype,
            "set device and dtype on the policy object when you pass policy=",
        )
    return policy


def _make_params(prompt: str | GenerationParams, overrides: dict[str, Any]) -> GenerationParams:
    unknown = [k for k in overrides if k not in _PARAM_NAMES]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, _PARAM_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidParameterError(
            name,
            overrides[name],
            f"is not a generation parameter; {hint}known: {', '.join(_PARAM_NAMES)}",
        )
    if isinstance(prompt, GenerationParams):
        return attrs.evolve(prompt, **overrides) if overrides else prompt
    if "prompt" in overrides:
        raise InvalidParameterError(
            "prompt", overrides["prompt"], "is given twice: positionally and as prompt="
        )
    return GenerationParams(prompt, **overrides)

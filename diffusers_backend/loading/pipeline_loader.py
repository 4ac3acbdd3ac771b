"""LoadModel's work: which class, which files, which dtype and device, what add-ons.

Order: validate the spec, resolve the model reference, pick the class through the dynamic
loader, load it (special loaders for the few families that need it), then scheduler,
adapters, task variant, placement. Any failure becomes a :class:`LoadError` that names
what failed; the caller keeps the previous model when that happens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffusers_backend.errors import BackendError, LoadError, short_message
from diffusers_backend.loading import acceleration, adapters, download, hub, placement, special
from diffusers_backend.loading.dependencies import check_pipeline_dependencies
from diffusers_backend.loading.ip_adapter import load_ip_adapter
from diffusers_backend.loading.model_ref import (
    ModelRef,
    RefKind,
    looks_missing,
    missing_model_message,
    resolve_model_ref,
)
from diffusers_backend.loading.options_table import FROM_PRETRAINED_KEYS
from diffusers_backend.loading.preview_decoder import load_preview_decoder
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.loading.weight_guard import (
    check_model_location,
    check_model_names,
    refuse_pickle_kwargs,
)
from diffusers_backend.settings import Settings

log = logging.getLogger(__name__)

REMOTE_CODE_KEYS = ("trust_remote_code", "custom_pipeline")


@dataclass
class LoadedPipeline:
    """A pipeline ready to serve, with what the runtime needs to know about it."""

    pipe: Any
    spec: LoadSpec
    device: str
    dtype_name: str
    load_seconds: float = 0.0
    description: str = ""
    # What was tolerated rather than refused (LocalAI's backend loads these too): shown in
    # LoadModel's reply and the log.
    warnings: list[str] = field(default_factory=list)
    # The ``Model`` LoadModel received, which requests name as ``ModelIdentity`` (a link
    # stays the link after it was downloaded to a file).
    identity: str = ""
    # The AutoencoderTiny live previews are decoded with (``preview_decoder``), or None.
    preview_decoder: Any = None

    @property
    def class_name(self) -> str:
        return type(self.pipe).__name__


# pipeline_type values that mean "the class the model itself declares" (its model_index.json,
# checkpoint or Hub entry). DiffusionPipeline.from_pretrained does that lookup anyway; doing it
# here lets the family's special loader apply. VideoDiffusionPipeline is no diffusers class:
# LocalAI's docs use it for text-to-video models and its backend loads it as DiffusionPipeline.
_MODEL_DECLARED_TYPES = frozenset({"diffusionpipeline", "videodiffusionpipeline"})


def resolve_class(spec: LoadSpec, ref: ModelRef) -> type:
    """PipelineType as a class name, a model class a special loader builds a pipeline around
    (FluxTransformer2DModel) or a task; else what the model itself declares."""
    from diffusers_backend.registry.resolution import (
        closest_pipeline_names,
        resolve_pipeline_class,
    )

    wanted = spec.pipeline_type.strip()
    if wanted.lower() in _MODEL_DECLARED_TYPES:
        wanted = ""
    if wanted:
        component = special.component_class(wanted)
        if component is not None:
            return component
        try:
            return resolve_pipeline_class(class_name=wanted)
        except ValueError:
            try:
                return resolve_pipeline_class(task=wanted)
            except ValueError:
                raise LoadError(
                    f"pipeline_type {wanted!r} is neither a diffusers pipeline class nor a "
                    f"task; did you mean {', '.join(closest_pipeline_names(wanted))}?"
                ) from None
    try:
        return resolve_pipeline_class(model_id=ref.location)
    except ValueError as exc:
        raise LoadError(f"cannot tell the pipeline class of {ref.location}: {exc}") from None


def _has_variant_files(folder: Path, variant: str) -> bool:
    return any(folder.glob(f"*/*.{variant}.*")) or any(folder.glob(f"*.{variant}.*"))


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*/*.safetensors")) or any(folder.glob("*.safetensors"))


def _local_or_hub(reference: str, model_path: str) -> str:
    """A ``config``/``original_config`` value: a path (relative to ModelPath) or a Hub id."""
    path = Path(reference).expanduser()
    if not path.is_absolute() and model_path and (Path(model_path) / path).exists():
        return str(Path(model_path) / path)
    return str(path) if path.exists() else reference


def keeps_safety_checker(spec: LoadSpec) -> bool:
    """The option ``safety_checker:true`` keeps a repo's NSFW checker; off by default, as in
    LocalAI's backend (a checker that fires turns the whole image black)."""
    return spec.options.get("safety_checker") is True


def _declares_safety_checker(cls: type[Any], ref: ModelRef) -> bool:
    """Whether loading ``cls`` from ``ref`` would build a safety checker component."""
    import inspect

    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        return True
    index = Path(ref.location) / "model_index.json"
    if ref.kind is RefKind.FOLDER and index.is_file():
        import json

        try:
            return "safety_checker" in json.loads(index.read_text())
        except (OSError, ValueError):
            return False
    return False


def _safety_checker_kwargs(cls: type, ref: ModelRef, spec: LoadSpec) -> dict[str, Any]:
    """Skip loading the safety checker at all (saves its weights) unless it is kept."""
    if keeps_safety_checker(spec) or not _declares_safety_checker(cls, ref):
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def _drop_safety_checker(pipe: Any, spec: LoadSpec) -> None:
    """A checker that came in anyway (a generic class resolved from the Hub): switch it off."""
    if keeps_safety_checker(spec) or getattr(pipe, "safety_checker", None) is None:
        return
    pipe.register_modules(safety_checker=None)
    if "requires_safety_checker" in getattr(pipe, "config", {}):
        pipe.register_to_config(requires_safety_checker=False)


def build_load_kwargs(spec: LoadSpec, ref: ModelRef, settings: Settings, dtype: Any,
                      device: str, cls: type | None = None) -> dict[str, Any]:
    """Keyword arguments for from_pretrained/from_single_file, with safety checks applied."""
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    load_options = spec.load_options
    for key in FROM_PRETRAINED_KEYS:
        if key in load_options:
            kwargs[key] = load_options[key]
    for key in ("config", "original_config"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = _local_or_hub(kwargs[key], spec.model_path)
    kwargs.update(spec.engine_args)
    refuse_pickle_kwargs(kwargs, settings.safetensors_only)
    for key in REMOTE_CODE_KEYS:
        if (load_options.get(key) or kwargs.get(key)) and not settings.allow_remote_code:
            raise LoadError(
                f"{key} runs code from the model repository and is disabled; "
                "set DIFFUSERS_ALLOW_REMOTE_CODE=1 to allow it"
            )
        if key in load_options:
            kwargs[key] = load_options[key]
    if ref.kind is RefKind.FOLDER:
        folder = Path(ref.location)
        if spec.torch_dtype_name() == "float16" and "variant" not in kwargs:
            if _has_variant_files(folder, "fp16"):
                kwargs["variant"] = "fp16"
        if settings.safetensors_only and "use_safetensors" not in kwargs:
            if not _has_safetensors(folder):
                raise LoadError(
                    f"{folder} has no .safetensors weights and SAFETENSORS=1 refuses pickle "
                    "weights (.bin/.ckpt); convert them, or set SAFETENSORS=0 to allow them"
                )
            kwargs["use_safetensors"] = True
    elif ref.kind is RefKind.HUB:
        if spec.torch_dtype_name() == "float16" and "variant" not in kwargs:
            kwargs["variant"] = "fp16"  # retried without it when the repo has none
        if settings.safetensors_only:
            kwargs.setdefault("use_safetensors", True)
    kwargs.update(placement.device_map_kwargs(spec, device))
    if cls is not None:
        kwargs.update(_safety_checker_kwargs(cls, ref, spec))
    if spec.clip_model:
        kwargs["text_encoder"] = adapters.load_clip_text_encoder(spec, dtype,
                                                                 settings.safetensors_only)
    return kwargs


def _load_with_variant_fallback(loader: special.Loader, cls: type, ref: ModelRef,
                                kwargs: dict[str, Any], spec: LoadSpec,
                                settings: Settings) -> Any:
    """Hub repos may lack the fp16 variant F16Memory asks for: then use plain weights."""
    try:
        return loader(cls, ref, kwargs, spec, settings)
    except (OSError, ValueError) as exc:
        auto_variant = ref.kind is RefKind.HUB and kwargs.get("variant") == "fp16" and (
            "variant" not in spec.load_options and "variant" not in spec.engine_args
        )
        if not auto_variant or "variant" not in str(exc).lower():
            raise
        log.info("no fp16 variant in %s; loading the plain weights in float16", ref.location)
        retry = {k: v for k, v in kwargs.items() if k != "variant"}
        return loader(cls, ref, retry, spec, settings)


def _as_task_variant(pipe: Any, spec: LoadSpec, controlnet: Any) -> Any:
    """Apply IMG2IMG and ControlNet by switching pipeline class on the same weights."""
    from diffusers_backend.registry.signatures import call_signature
    from diffusers_backend.registry.variants import make_variant

    takes_image = call_signature(type(pipe)).accepts("image")
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    try:
        if spec.img2img and not takes_image:
            return make_variant(pipe, "img2img", **extra)
        if controlnet is not None:
            return make_variant(pipe, "img2img" if takes_image else "txt2img", **extra)
    except ValueError as exc:
        what = "ControlNet" if controlnet is not None else "img2img"
        raise LoadError(
            f"{type(pipe).__name__} has no {what} variant in diffusers: {short_message(exc)}"
        ) from None
    return pipe


def _denoiser_dtype_name(pipe: Any, asked: str) -> str:
    """The dtype the model really computes in (a special loader may choose another one)."""
    for name in ("transformer", "unet", "prior"):
        dtype = getattr(getattr(pipe, name, None), "dtype", None)
        if dtype is not None:
            return str(dtype).removeprefix("torch.")
    return asked


def _find(spec: LoadSpec, settings: Settings) -> tuple[LoadSpec, ModelRef, type]:
    """What to load and as which class: a URL fetched once, the reference, the class."""
    check_model_names(spec, settings.safetensors_only)
    spec = download.fetch_url_model(spec, settings.safetensors_only)  # a URL: fetch it once
    ref = resolve_model_ref(spec.model, spec.model_file, spec.model_path,
                            safetensors_only=settings.safetensors_only)
    check_model_location(ref, settings.safetensors_only)
    if ref.kind is RefKind.HUB and hub.unreachable() and not hub.is_cached(ref.location):
        # no Hub and no cached copy: say so now, not after the library's retries
        raise LoadError(missing_model_message(spec.model, spec.model_file, spec.model_path))
    # a .gguf file is a transformer alone: its base repo names the pipeline class
    class_ref = special.gguf_base_ref(spec, settings) if special.is_gguf(ref) else ref
    try:
        cls = resolve_class(spec, class_ref)
    except LoadError as exc:
        if ref.kind is RefKind.HUB and looks_missing(exc):
            raise LoadError(missing_model_message(spec.model, spec.model_file,
                                                  spec.model_path)) from exc
        raise
    check_pipeline_dependencies(cls)  # e.g. torchvision, before any weights are read
    return spec, ref, cls


def _load_weights(spec: LoadSpec, ref: ModelRef, cls: type, kwargs: dict[str, Any],
                  settings: Settings) -> Any:
    """The pipeline's weights through its (special) loader; library failures explained."""
    loader = special.load_gguf if special.is_gguf(ref) else special.loader_for(cls.__name__)
    # a file without its config asks the Hub for it; with the Hub unreachable, only the
    # cache is asked (offline mode), so the load ends at once instead of after retries
    asks_hub = ref.kind is RefKind.HUB or (ref.kind is RefKind.SINGLE_FILE
                                           and "config" not in kwargs)
    try:
        with hub.offline_mode(asks_hub and hub.unreachable() is not None):
            return _load_with_variant_fallback(loader, cls, ref, kwargs, spec, settings)
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library failure, reported with context
        offline = any(w in str(exc).lower() for w in ("offline", "outgoing traffic"))
        no_config = ref.kind is RefKind.SINGLE_FILE and "config" not in kwargs and offline
        missing = no_config or (ref.kind is RefKind.HUB and looks_missing(exc))
        # a model that is not there is the user's to fix: one line (the servicer's), the
        # library's traceback only at DEBUG; anything else is ours to see at ERROR
        log.log(logging.DEBUG if missing else logging.ERROR, "loading %s as %s failed",
                ref.location, cls.__name__, exc_info=True)
        if no_config:
            raise LoadError(
                f"could not load {ref.location} as {cls.__name__}: a single-file checkpoint "
                f"needs its pipeline config and {hub.why_no_hub()}; add the option "
                "config:<diffusers folder (or Hub id) of the same architecture> "
                f"({short_message(exc)})"
            ) from exc
        if ref.kind is RefKind.HUB and looks_missing(exc):
            raise LoadError(missing_model_message(spec.model, spec.model_file,
                                                  spec.model_path)) from exc
        raise LoadError(
            f"could not load {ref.location} as {cls.__name__}: {short_message(exc)}"
        ) from exc


def _scheduler(pipe: Any, spec: LoadSpec, warnings: list[str]) -> LoadSpec:
    """Install scheduler_type; an unknown name keeps the model's own (with a warning), as
    LocalAI's backend ignores it (its docs even show the typo k_dpp_sde)."""
    from diffusers_backend.loading import schedulers

    if not spec.scheduler_type:
        return spec
    try:
        schedulers.apply_scheduler(pipe, spec.scheduler_type)
    except BackendError as exc:
        warnings.append(f"scheduler_type {spec.scheduler_type!r} ignored, keeping "
                        f"{type(getattr(pipe, 'scheduler', None)).__name__}: {exc}")
        return replace(spec, scheduler_type="")
    return spec


def _describe(pipe: Any, spec: LoadSpec, description: str) -> str:
    """The ``loaded ...`` log line's details: scheduler installed, CPU threads."""
    scheduler = getattr(pipe, "scheduler", None)
    if spec.scheduler_type and scheduler is not None:
        karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
        description += (f", scheduler {spec.scheduler_type} = {type(scheduler).__name__}"
                        + (" (karras)" if karras else ""))
    if spec.threads > 0:
        import torch

        description += f", {torch.get_num_threads()} CPU threads"
    return description


def load_pipeline(spec: LoadSpec, settings: Settings) -> LoadedPipeline:
    """Load everything LoadModel asked for; raise LoadError naming the failing part.

    Order: find (URL, reference, class), the weights, then what goes on top: safety checker
    off, scheduler, ControlNet / img2img variant, LoRAs, placement, speed options.
    """
    started = time.perf_counter()
    spec.validate()
    identity = spec.model
    spec, ref, cls = _find(spec, settings)
    device = placement.pick_device(spec, settings)
    dtype = placement.torch_dtype(spec)
    if spec.threads > 0:
        import torch

        torch.set_num_threads(spec.threads)
    kwargs = build_load_kwargs(spec, ref, settings, dtype, device, cls)
    log.info("loading %s as %s (%s, %s)", ref.location, cls.__name__, device,
             spec.torch_dtype_name())
    pipe = _load_weights(spec, ref, cls, kwargs, settings)
    warnings = list(spec.warnings)
    _drop_safety_checker(pipe, spec)
    spec = _scheduler(pipe, spec, warnings)
    controlnet = None
    if spec.controlnet:
        extra = {k: kwargs[k] for k in ("use_safetensors",) if k in kwargs}
        controlnet = adapters.load_controlnet(spec, dtype, extra, settings.safetensors_only)
    pipe = _as_task_variant(pipe, spec, controlnet)
    adapters.load_loras(pipe, spec, settings.safetensors_only)
    ip_note = load_ip_adapter(pipe, spec, dtype, settings.safetensors_only)
    preview = load_preview_decoder(pipe, spec, device, dtype, settings.safetensors_only)
    description = placement.apply_memory_modes(pipe, spec, settings, device)
    if ip_note:
        description += ", " + ip_note
    speed_notes = acceleration.apply_speed_options(pipe, spec)
    if speed_notes:
        warmed = acceleration.warm_up(pipe, spec)
        description += ", " + ", ".join(speed_notes)
        if warmed:
            description += f", warmed up in {warmed:.1f}s"
    description = _describe(pipe, spec, description)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    elapsed = time.perf_counter() - started
    log.info("loaded %s in %.2fs (%s)", type(pipe).__name__, elapsed, description)
    dtype_name = _denoiser_dtype_name(pipe, spec.torch_dtype_name())
    warnings += spec.dtype_warnings(dtype_name)
    return LoadedPipeline(pipe=pipe, spec=spec, device=device, dtype_name=dtype_name,
                          load_seconds=elapsed, description=description,
                          warnings=warnings, identity=identity, preview_decoder=preview)


def find_class(spec: LoadSpec, settings: Settings) -> tuple[LoadSpec, type]:
    """The spec (a URL model fetched once) and the pipeline class LoadModel would load, before
    any weights are read (engine/parallel/ picks its mode from the class)."""
    spec, _ref, cls = _find(spec, settings)
    return spec, cls

"""LoadModel's *adapt* stage: what goes onto the loaded weights before they serve.

The safety checker (off unless kept), the scheduler, the task variant (img2img, ControlNet),
LoRAs, an IP-Adapter, the preview decoder; and the components swapped in while the weights
load (no safety checker, a replacement CLIP text encoder), so the model's own are never read.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffusers_backend.errors import BackendError, LoadError, short_message
from diffusers_backend.loading import adapters
from diffusers_backend.loading.ip_adapter import load_ip_adapter
from diffusers_backend.loading.load_plan import LoadPlan
from diffusers_backend.loading.model_ref import RefKind
from diffusers_backend.loading.preview_decoder import load_preview_decoder
from diffusers_backend.loading.spec import LoadSpec


@dataclass
class Adapted:
    """The pipeline as it will serve, and what adapting it changed or noted."""

    pipe: Any
    spec: LoadSpec  # without a scheduler_type that was ignored
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the load's description
    preview_decoder: Any = None


def keeps_safety_checker(spec: LoadSpec) -> bool:
    """The option ``safety_checker:true`` keeps a repo's NSFW checker; off by default, as in
    LocalAI's backend (a checker that fires turns the whole image black)."""
    return spec.options.get("safety_checker") is True


def _declares_safety_checker(plan: LoadPlan) -> bool:
    """Whether loading the plan's class from its model would build a safety checker."""
    cls: type[Any] = plan.pipeline_class
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        return True
    index = Path(plan.ref.location) / "model_index.json"
    if plan.ref.kind is RefKind.FOLDER and index.is_file():
        try:
            return "safety_checker" in json.loads(index.read_text())
        except (OSError, ValueError):
            return False
    return False


def safety_checker_kwargs(plan: LoadPlan) -> dict[str, Any]:
    """Skip loading the safety checker at all (saves its weights) unless it is kept."""
    if keeps_safety_checker(plan.spec) or not _declares_safety_checker(plan):
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def clip_kwargs(plan: LoadPlan) -> dict[str, Any]:
    """``CLIPModel``: the replacement text encoder, given to the load so the model's own is
    never read."""
    if not plan.spec.clip_model:
        return {}
    return {"text_encoder": adapters.load_clip_text_encoder(
        plan.spec, plan.dtype, plan.settings.safetensors_only)}


def _drop_safety_checker(pipe: Any, spec: LoadSpec) -> None:
    """A checker that came in anyway (a generic class resolved from the Hub): switch it off."""
    if keeps_safety_checker(spec) or getattr(pipe, "safety_checker", None) is None:
        return
    pipe.register_modules(safety_checker=None)
    if "requires_safety_checker" in getattr(pipe, "config", {}):
        pipe.register_to_config(requires_safety_checker=False)


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


def adapt(pipe: Any, plan: LoadPlan, kwargs: dict[str, Any]) -> Adapted:
    """Everything that goes on top of the weights ``kwargs`` loaded, in order."""
    safetensors_only = plan.settings.safetensors_only
    done = Adapted(pipe=pipe, spec=plan.spec, warnings=list(plan.spec.warnings))
    _drop_safety_checker(done.pipe, done.spec)
    done.spec = _scheduler(done.pipe, done.spec, done.warnings)
    controlnet = None
    if done.spec.controlnet:
        extra = {k: kwargs[k] for k in ("use_safetensors",) if k in kwargs}
        controlnet = adapters.load_controlnet(done.spec, plan.dtype, extra, safetensors_only)
    done.pipe = _as_task_variant(done.pipe, done.spec, controlnet)
    adapters.load_loras(done.pipe, done.spec, safetensors_only)
    ip_note = load_ip_adapter(done.pipe, done.spec, plan.dtype, safetensors_only)
    if ip_note:
        done.notes.append(ip_note)
    done.preview_decoder = load_preview_decoder(done.pipe, done.spec, plan.device, plan.dtype,
                                                safetensors_only)
    return done

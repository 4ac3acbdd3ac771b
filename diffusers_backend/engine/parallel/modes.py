"""Which way ``TensorParallelSize`` runs a model: decided from the pipeline class and the
device before any weights are read, so each mode loads once."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

from diffusers_backend.errors import LoadError

CP_KINDS = ("ulysses", "ring")
DEFAULT_TIMEOUT_S = 120.0
# Options whose effect on diffusers' context-parallel hooks is not known to be right:
# refused at load with this reason rather than run with a wrong or silently slow result.
_REFUSED_WITH_CP = {
    "compile": "torch.compile is not verified with context parallelism here",
    "compile_regional": "torch.compile is not verified with context parallelism here",
    "cache": "step caches decide per rank and would let the ranks disagree",
}


class Mode(str, Enum):
    SINGLE = "single"  # one process (TensorParallelSize < 2, or a CPU without a plan)
    BALANCED = "balanced"  # one process, device_map "balanced" over the GPUs
    CONTEXT_PARALLEL = "context_parallel"  # N worker processes on torch.distributed


@dataclass(frozen=True)
class Choice:
    """The mode, and the sentence the LoadModel reply and the log give for it."""

    mode: Mode
    world_size: int = 1
    kind: str = "ulysses"
    timeout_s: float = DEFAULT_TIMEOUT_S
    warning: str = ""


def denoiser_class(pipeline_class: type) -> type | None:
    """The transformer (or UNet) class a pipeline's constructor declares, if any."""
    init: Any = getattr(pipeline_class, "__init__", None)
    try:
        parameters = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return None
    for name in ("transformer", "unet"):
        parameter = parameters.get(name)
        if parameter is None:
            continue
        annotation = parameter.annotation
        if isinstance(annotation, str):
            import diffusers

            annotation = getattr(diffusers, annotation.strip("'\""), None)
        for candidate in (annotation, *typing.get_args(annotation)):  # `X | None` too
            if isinstance(candidate, type) and candidate is not type(None):
                return candidate
    return None


def has_cp_plan(pipeline_class: type) -> bool:
    """Whether diffusers ships a context-parallel plan for the pipeline's denoiser."""
    if getattr(pipeline_class, "_cp_plan", None):  # a denoiser class loaded as the model
        return True
    denoiser = denoiser_class(pipeline_class)
    return bool(getattr(denoiser, "_cp_plan", None))


def _kind(options: dict[str, Any], device: str) -> str:
    kind = str(options.get("context_parallel", "ulysses")).strip().lower()
    if kind not in CP_KINDS:
        raise LoadError(f"context_parallel {kind!r}: use one of {', '.join(CP_KINDS)}")
    if kind == "ring" and device != "cuda":
        raise LoadError("context_parallel ring needs CUDA GPUs: ring attention needs the "
                        "attention's log-sum-exp, which the CPU attention does not return; "
                        "use ulysses")
    return kind


def _timeout(options: dict[str, Any]) -> float:
    value = options.get("context_parallel_timeout", DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise LoadError(f"context_parallel_timeout must be a number of seconds above 0, "
                        f"got {value!r}")
    return seconds


def choose(size: int, pipeline_class: type, device: str, options: dict[str, Any],
           gpu_count: int) -> Choice:
    """The mode for ``TensorParallelSize = size`` (see docs/parallel.md)."""
    if size < 2:
        return Choice(Mode.SINGLE)
    name = pipeline_class.__name__
    if not has_cp_plan(pipeline_class):
        if device == "cuda" and gpu_count >= 2:
            return Choice(Mode.BALANCED, warning=(
                f"tensor_parallel_size={size}: {name} has no context-parallel plan in "
                f"diffusers; its components are spread over {gpu_count} GPUs "
                f"(device_map balanced) and run one after another"))
        return Choice(Mode.SINGLE, warning=(
            f"tensor_parallel_size={size}: {name} has no context-parallel plan in diffusers "
            f"and {device} has no device map to spread it; loaded in one process"))
    if device not in ("cuda", "cpu"):
        return Choice(Mode.SINGLE, warning=(
            f"tensor_parallel_size={size}: context parallelism runs on CUDA (NCCL) or the CPU "
            f"(gloo), not on {device}; loaded in one process"))
    if device == "cuda" and gpu_count < size:
        raise LoadError(f"tensor_parallel_size={size} needs {size} GPUs, one per worker; "
                        f"{gpu_count} visible")
    for key, reason in _REFUSED_WITH_CP.items():
        if options.get(key) not in (None, False, "none", ""):
            raise LoadError(f"option {key} cannot be used with tensor_parallel_size={size}: "
                            f"{reason}")
    return Choice(Mode.CONTEXT_PARALLEL, world_size=size, kind=_kind(options, device),
                  timeout_s=_timeout(options))

"""Packages a pipeline class needs beyond the ones every pipeline needs, checked before loading.

Without them the load fails deep inside transformers with an error that names something
else (``VIDEO_PROCESSOR_MAPPING has no attribute _extra_content`` for a Qwen2-VL processor
without torchvision), after minutes of reading weights. Checking the class first turns that
into one sentence saying what to install.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from diffusers_backend.errors import LoadError

TORCHVISION_PIN = "torchvision==0.28.0"  # the release built for torch 2.13.0


def _processor_types(cls: type[Any]) -> list[type[Any]]:
    """The transformers processor classes (multimodal ``ProcessorMixin``) ``cls`` is built from."""
    try:
        from transformers import ProcessorMixin
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return []
    found = []
    for parameter in inspect.signature(cls.__init__).parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, type) and issubclass(annotation, ProcessorMixin):
            found.append(annotation)
    return found


def _has_video_processor(processor: type[Any]) -> bool:
    """transformers 5 builds a processor's video part only with torchvision installed."""
    try:
        attributes = processor.get_attributes()
    except Exception:  # noqa: BLE001 - an old or odd processor: assume no video part
        return False
    return "video_processor" in attributes


@functools.lru_cache(maxsize=1)
def torchvision_problem() -> str:
    """Empty when torchvision imports; else why not (absent, or built for another torch)."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        return "torchvision is not installed"
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch
        return f"torchvision is installed but does not import ({type(exc).__name__}: {exc})"
    return ""


def check_pipeline_dependencies(cls: type, problem: Any = None) -> None:
    """Raise LoadError naming the package ``cls`` needs and cannot have here."""
    needs = [p.__name__ for p in _processor_types(cls) if _has_video_processor(p)]
    if not needs:
        return
    reason = (problem or torchvision_problem)()
    if reason:
        raise LoadError(
            f"{cls.__name__} needs torchvision (its {needs[0]} has a video part that "
            f"transformers builds only with torchvision) and {reason}. Install the GPU "
            f"build (BUILD_TYPE=cuda, cublas, ...: they pin {TORCHVISION_PIN}), or "
            f"pip install {TORCHVISION_PIN} built for your torch (for the CPU build: from "
            "PyTorch's CPU index)"
        )

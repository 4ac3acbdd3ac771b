"""Things added onto a loaded pipeline: LoRA adapters, a ControlNet, a replacement CLIP.

All paths are taken relative to the host's models folder (``ModelPath``) unless absolute,
and local files load offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from diffusers_backend import path_guard
from diffusers_backend.errors import BackendError, LoadError, short_message
from diffusers_backend.loading import weight_guard
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)


def _local_path(name: str, model_path: str, what: str, safetensors_only: bool) -> Path | None:
    """The file or folder ``name`` means on disk, checked (see weight_guard.local_weights)."""
    return weight_guard.local_weights(name, model_path, what, safetensors_only)


def lora_plan(spec: LoadSpec) -> list[tuple[str, float]]:
    """The (reference, scale) pairs to load: LoraAdapter (with LoraScale) and every one of
    LoraAdapters (with LoraScales); a YAML may set both, and LocalAI's backend loads both."""
    plan: list[tuple[str, float]] = []
    if spec.lora_adapter:
        plan.append((spec.lora_adapter, spec.lora_scale or 1.0))
    scales = spec.lora_scales or tuple(1.0 for _ in spec.lora_adapters)
    for reference, scale in zip(spec.lora_adapters, scales, strict=True):
        if reference != spec.lora_adapter:
            plan.append((reference, scale))
    return plan


def load_loras(pipe: Any, spec: LoadSpec, safetensors_only: bool = True) -> list[str]:
    """Load every LoRA of the spec as a named adapter and set their weights."""
    plan = lora_plan(spec)
    if not plan:
        return []
    if not hasattr(pipe, "load_lora_weights"):
        raise LoadError(f"{type(pipe).__name__} does not support LoRA adapters")
    names: list[str] = []
    for index, (reference, _scale) in enumerate(plan):
        adapter_name = f"lora_{index}"
        strict = weight_guard.strict(safetensors_only)
        try:
            local = _local_path(reference, spec.model_path, "LoRA", safetensors_only)
            if local is not None and local.is_file():
                pipe.load_lora_weights(str(local.parent), weight_name=local.name,
                                       adapter_name=adapter_name, **strict)
            elif local is not None:
                pipe.load_lora_weights(str(local), adapter_name=adapter_name, **strict)
            elif os.path.isabs(reference) or reference.endswith((".safetensors", ".bin")):
                raise LoadError(f"LoRA file not found: {path_guard.shown(reference)} (models "
                                f"folder: {spec.model_path or 'not set'})")
            else:
                pipe.load_lora_weights(reference, adapter_name=adapter_name, **strict)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the user with the path
            raise LoadError(
                f"could not load LoRA {reference}: {short_message(exc)}"
            ) from exc
        names.append(adapter_name)
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in plan])
    log.info("LoRA adapters loaded: %s", ", ".join(f"{r} x{s}" for r, s in plan))
    return names


def load_controlnet(spec: LoadSpec, dtype: Any, extra: dict[str, Any],
                    safetensors_only: bool = True) -> Any:
    """Load the ControlNet model named by the spec (folder or Hub id)."""
    from diffusers import ControlNetModel

    local = _local_path(spec.controlnet, spec.model_path, "ControlNet", safetensors_only)
    reference = str(local) if local is not None else spec.controlnet
    try:
        if local is not None and local.is_file():
            return ControlNetModel.from_single_file(reference, torch_dtype=dtype)
        return ControlNetModel.from_pretrained(reference, torch_dtype=dtype,
                                               **{**extra, **weight_guard.strict(safetensors_only)})
    except Exception as exc:  # noqa: BLE001
        raise LoadError(
            f"could not load ControlNet {spec.controlnet}: {short_message(exc)}"
        ) from exc


def load_clip_text_encoder(spec: LoadSpec, dtype: Any, safetensors_only: bool = True) -> Any:
    """``CLIPModel``/``CLIPSubfolder``: a replacement text encoder for the pipeline."""
    from transformers import CLIPTextModel

    local = _local_path(spec.clip_model, spec.model_path, "CLIP model", safetensors_only)
    reference = str(local) if local is not None else spec.clip_model
    kwargs: dict[str, Any] = {"torch_dtype": dtype, **weight_guard.strict(safetensors_only)}
    if spec.clip_subfolder:
        kwargs["subfolder"] = spec.clip_subfolder
    try:
        return CLIPTextModel.from_pretrained(reference, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(
            f"could not load CLIP model {spec.clip_model}: {short_message(exc)}"
        ) from exc

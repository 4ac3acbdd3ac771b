"""Weights published as a precision variant (``*.fp16.safetensors``, ``*.bf16.*``): loaded
where the model has them, the plain weights where it has not.

One helper for the two families of the rule: float16 loads ask for the ``fp16`` variant
(F16Memory), Sana asks for ``bf16`` (as LocalAI loads it). A variant the YAML chose itself is
never second-guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)


def has_variant_files(folder: Path, variant: str) -> bool:
    return any(folder.glob(f"*/*.{variant}.*")) or any(folder.glob(f"*.{variant}.*"))


def chosen(spec: LoadSpec) -> bool:
    """Whether the YAML names a variant itself (Options or EngineArgs)."""
    return "variant" in spec.load_options or "variant" in spec.engine_args


def load_variant(load: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any],
                 variant: str, ref: ModelRef, spec: LoadSpec) -> Any:
    """``load(kwargs)`` with ``variant`` added: for a folder only when it holds such files;
    a Hub repo is asked for them and loaded plain when it has none; a single file, or a
    variant the YAML chose, loads as it is."""
    if chosen(spec) or ref.kind is RefKind.SINGLE_FILE:
        return load(kwargs)
    if ref.kind is RefKind.FOLDER:
        if not has_variant_files(Path(ref.location), variant):
            return load(kwargs)
        log.info("loading the %s variant of %s", variant, ref.location)
        return load({**kwargs, "variant": variant})
    try:
        return load({**kwargs, "variant": variant})
    except (OSError, ValueError) as exc:
        if "variant" not in str(exc).lower():
            raise
        log.info("no %s variant in %s; loading its plain weights", variant, ref.location)
        return load(kwargs)

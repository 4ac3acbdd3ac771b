"""LoadModel's second stage, *guard*: every path of the plan and every policy, checked once,
before any file's content is read.

It walks :meth:`LoadPlan.paths` (the model, each path option, LoRAs, ControlNet, CLIP), so a
new path option is guarded by being declared in the option table, not by remembering a call:
each path confined to ``DIFFUSERS_ALLOWED_PATHS``, every file regular, no pickle weights
under ``SAFETENSORS``. Then the keywords the YAML passes to the loader: no
``use_safetensors: false`` under SAFETENSORS, no remote code unless allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.options_table import FROM_PRETRAINED_KEYS
from diffusers_backend.loading.weight_guard import (
    check_local,
    check_model_location,
    refuse_pickle_kwargs,
)

if TYPE_CHECKING:
    from diffusers_backend.loading.load_plan import LoadPlan
    from diffusers_backend.loading.spec import LoadSpec

REMOTE_CODE_KEYS = ("trust_remote_code", "custom_pipeline")


def requested_kwargs(spec: LoadSpec) -> dict[str, Any]:
    """What the YAML passes to ``from_pretrained`` itself (options, then EngineArgs)."""
    load_options = spec.load_options
    asked = {key: load_options[key] for key in FROM_PRETRAINED_KEYS if key in load_options}
    asked.update(spec.engine_args)
    return asked


def guard(plan: LoadPlan) -> None:
    """Refuse the plan (PERMISSION_DENIED, INVALID_ARGUMENT or a LoadError naming the path
    and the fix) unless every path it reads and every keyword it passes is allowed."""
    safetensors_only = plan.settings.safetensors_only
    for item in plan.paths():
        if item.role == "model":
            check_model_location(plan.ref, safetensors_only)
        else:
            check_local(item.path, item.field, item.role, safetensors_only)
    asked = requested_kwargs(plan.spec)
    refuse_pickle_kwargs(asked, safetensors_only)
    load_options = plan.spec.load_options
    for key in REMOTE_CODE_KEYS:
        if (load_options.get(key) or asked.get(key)) and not plan.settings.allow_remote_code:
            raise LoadError(
                f"{key} runs code from the model repository and is disabled; "
                "set DIFFUSERS_ALLOW_REMOTE_CODE=1 to allow it"
            )

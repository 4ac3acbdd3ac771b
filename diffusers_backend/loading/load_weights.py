"""LoadModel's *load* stage: the pipeline's weights, through its family's loader.

The keywords for ``from_pretrained``/``from_single_file`` (the YAML's own, the SAFETENSORS
rule, device map, the components swapped in at load), the precision variant where the model
has one, and a library failure turned into a :class:`LoadError` the user can act on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffusers_backend.errors import LoadError, short_message
from diffusers_backend.loading import adapt, hub, placement, special
from diffusers_backend.loading.load_guard import REMOTE_CODE_KEYS
from diffusers_backend.loading.load_plan import LoadPlan
from diffusers_backend.loading.model_ref import RefKind, looks_missing, missing_model_message
from diffusers_backend.loading.options_table import FROM_PRETRAINED_KEYS
from diffusers_backend.loading.precision_variant import load_variant
from diffusers_backend.loading.weight_guard import strict

log = logging.getLogger(__name__)


def _check_has_safetensors(folder: Path) -> None:
    """``use_safetensors=True`` on a folder without any: say why now (the guard has refused
    any pickle weights already; this one is a folder with no weights the rule allows)."""
    if not (any(folder.glob("*/*.safetensors")) or any(folder.glob("*.safetensors"))):
        raise LoadError(
            f"{folder} has no .safetensors weights and SAFETENSORS=1 refuses pickle "
            "weights (.bin/.ckpt); convert them, or set SAFETENSORS=0 to allow them"
        )


def load_kwargs(plan: LoadPlan) -> dict[str, Any]:
    """Keyword arguments for from_pretrained/from_single_file (the guard has passed them)."""
    spec = plan.spec
    kwargs: dict[str, Any] = {"torch_dtype": plan.dtype}
    load_options = spec.load_options
    for key in FROM_PRETRAINED_KEYS:
        if key in load_options:
            kwargs[key] = load_options[key]
    for key in ("config", "original_config"):  # a path found on disk, else a Hub id
        side = plan.side(key)
        if isinstance(kwargs.get(key), str) and side is not None and side.location:
            kwargs[key] = str(side.location)
    kwargs.update(spec.engine_args)
    for key in REMOTE_CODE_KEYS:
        if key in load_options:
            kwargs[key] = load_options[key]
    if plan.ref.kind is not RefKind.SINGLE_FILE and "use_safetensors" not in kwargs:
        if plan.ref.kind is RefKind.FOLDER and plan.settings.safetensors_only:
            _check_has_safetensors(Path(plan.ref.location))
        kwargs.update(strict(plan.settings.safetensors_only))
    kwargs.update(placement.device_map_kwargs(spec, plan.device))
    kwargs.update(adapt.safety_checker_kwargs(plan))
    kwargs.update(adapt.clip_kwargs(plan))
    return kwargs


def _load(plan: LoadPlan, kwargs: dict[str, Any]) -> Any:
    """The family's loader; float16 loads take the ``fp16`` variant where there is one."""
    cls, ref, spec = plan.pipeline_class, plan.ref, plan.spec
    loader = special.load_gguf if special.is_gguf(ref) else special.loader_for(cls.__name__)

    def run(chosen: dict[str, Any]) -> Any:
        return loader(cls, ref, chosen, spec, plan.settings)

    if spec.torch_dtype_name() == "float16" and "variant" not in kwargs:
        return load_variant(run, kwargs, "fp16", ref, spec)
    return run(kwargs)


def load(plan: LoadPlan, kwargs: dict[str, Any]) -> Any:
    """The pipeline's weights through its (special) loader; library failures explained."""
    cls, ref, spec = plan.pipeline_class, plan.ref, plan.spec
    # a file without its config asks the Hub for it; with the Hub unreachable, only the
    # cache is asked (offline mode), so the load ends at once instead of after retries
    asks_hub = ref.kind is RefKind.HUB or (ref.kind is RefKind.SINGLE_FILE
                                           and "config" not in kwargs)
    try:
        with hub.offline_mode(asks_hub and hub.unreachable() is not None):
            return _load(plan, kwargs)
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

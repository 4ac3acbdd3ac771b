"""Turn the ``SchedulerType`` of a LocalAI model YAML into a diffusers scheduler.

Users write the sampler names they know from AUTOMATIC1111 (``euler_a``, ``k_dpmpp_2m``...),
so those names map onto the matching diffusers classes. Any diffusers scheduler class name
is accepted too, for samplers A1111 has no name for. Either way the new scheduler is built
from the loaded model's scheduler config, so what the model was trained with
(``prediction_type``, ``steps_offset``, ``timestep_spacing``, beta schedule...) carries over;
only what the sampler name itself decides is overridden.

A ``k_`` prefix asks for Karras sigmas. Samplers whose diffusers class has no Karras option
(``ddim``, ``pndm``, ``euler_a``) accept the prefix and ignore it, as A1111 has no separate
Karras form of them either.

Every name must work with every step count, because the step count comes per request while
the scheduler comes from the model YAML. PNDM's Runge-Kutta warm-up needs more steps than
users often ask for, so PNDM always runs with ``skip_prk_steps=True`` (PLMS only).

Nothing here imports torch or diffusers at module level: the server must start fast.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from diffusers_backend.errors import InvalidArgument

log = logging.getLogger(__name__)

KARRAS_PREFIX = "k_"


@dataclass(frozen=True)
class _Sampler:
    """How one A1111 sampler name maps onto diffusers."""

    cls: str
    overrides: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # Python packages the scheduler imports at run time


# A1111 sampler names (LocalAI's spelling) -> diffusers scheduler. The mapping follows the
# table in the diffusers docs ("A1111/k-diffusion and diffusers").
_A1111: dict[str, _Sampler] = {
    "ddim": _Sampler("DDIMScheduler"),
    "pndm": _Sampler("PNDMScheduler"),
    "heun": _Sampler("HeunDiscreteScheduler"),
    "unipc": _Sampler("UniPCMultistepScheduler"),
    "euler": _Sampler("EulerDiscreteScheduler"),
    "euler_a": _Sampler("EulerAncestralDiscreteScheduler"),
    "lms": _Sampler("LMSDiscreteScheduler", needs=("scipy",)),
    "dpm_2": _Sampler("KDPM2DiscreteScheduler"),
    "dpm_2_a": _Sampler("KDPM2AncestralDiscreteScheduler"),
    "dpmpp_2m": _Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_sde": _Sampler("DPMSolverSDEScheduler", needs=("torchsde",)),
    "dpmpp_2m_sde": _Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    ),
}

# Flow-matching models (Flux, SD3...) need flow-matching schedulers; of the A1111 names
# only Euler has one, so the others are refused there instead of failing mid-generation.
_A1111_FLOW: dict[str, _Sampler] = {
    "euler": _Sampler("FlowMatchEulerDiscreteScheduler"),
}

# Fix-ups applied whenever a class is built, whatever name chose it.
_CLASS_FIXUPS: dict[str, dict[str, Any]] = {
    # PRK warm-up needs several steps per inference step and breaks on small step counts.
    "PNDMScheduler": {"skip_prk_steps": True},
}

# Sigma-schedule switches that diffusers allows only one of at a time.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# pipe -> (scheduler config as loaded, its class name, scheduler we last installed).
# Building every change from the loaded config keeps repeated switches from drifting away
# from the model's config.
_BASE_CONFIGS: weakref.WeakKeyDictionary[Any, tuple[dict[str, Any], str, Any]] = (
    weakref.WeakKeyDictionary()
)


def available_scheduler_names() -> list[str]:
    """The A1111 sampler names accepted, plain and with the ``k_`` (Karras) prefix."""
    names = list(_A1111)
    return names + [KARRAS_PREFIX + n for n in names]


def _diffusers_scheduler_names() -> list[str]:
    """Every name diffusers exports that looks like a scheduler class (nothing imported)."""
    import diffusers

    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))


def _unknown_name(name: str) -> InvalidArgument:
    """The error for a name that is neither an A1111 name nor a diffusers class."""
    a1111 = available_scheduler_names()
    classes = _diffusers_scheduler_names()
    by_lower = {c.lower(): c for c in classes}
    lowered = name.strip().lower()
    match = difflib.get_close_matches(lowered, a1111 + list(by_lower), n=1, cutoff=0.6)
    hint = ""
    if match:
        hint = f" Did you mean {by_lower.get(match[0], match[0])!r}?"
    return InvalidArgument(
        f"unknown scheduler {name!r}.{hint} Valid names: {', '.join(a1111)}; "
        "any diffusers scheduler class name (e.g. EulerDiscreteScheduler) works too."
    )


def _scheduler_class(class_name: str, needs: tuple[str, ...] = ()) -> type:
    """Import a diffusers scheduler class, with a clear error if a dependency is missing."""
    import diffusers
    from diffusers import SchedulerMixin

    for package in needs:
        if importlib.util.find_spec(package) is None:
            raise InvalidArgument(
                f"scheduler {class_name} needs the Python package {package!r}, "
                "which is not installed on this backend"
            )
    cls = getattr(diffusers, class_name)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        # diffusers exports a placeholder when an optional dependency is missing.
        backends = getattr(cls, "_backends", None)
        if backends:
            raise InvalidArgument(
                f"scheduler {class_name} needs {', '.join(backends)}, "
                "which is not installed on this backend"
            )
        raise InvalidArgument(f"{class_name} is not a diffusers scheduler")
    return cls


def _accepted_init_args(cls: type[Any]) -> set[str]:
    """Parameter names of a scheduler's ``__init__`` (its config keys)."""
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _is_flow_matching(config: dict[str, Any], class_name: str) -> bool:
    """True when the loaded model is a flow-matching one (Flux, SD3, ...)."""
    return (
        class_name.startswith("FlowMatch")
        or config.get("prediction_type") == "flow_prediction"
        or bool(config.get("use_flow_sigmas"))
    )


def _resolve(name: str, config: dict[str, Any],
             current_class: str) -> tuple[type[Any], dict[str, Any]]:
    """Map a user-given name to (scheduler class, config overrides)."""
    lowered = name.strip().lower()
    karras = lowered.startswith(KARRAS_PREFIX) and lowered[len(KARRAS_PREFIX) :] in _A1111
    base = lowered[len(KARRAS_PREFIX) :] if karras else lowered

    if base in _A1111:
        table = _A1111
        if _is_flow_matching(config, current_class):
            if base not in _A1111_FLOW:
                raise InvalidArgument(
                    f"scheduler {name!r} does not work with this flow-matching model "
                    f"(it uses {current_class}); use euler or k_euler, or a FlowMatch* "
                    "diffusers scheduler class name"
                )
            table = _A1111_FLOW
        sampler = table[base]
        cls = _scheduler_class(sampler.cls, sampler.needs)
        accepted = _accepted_init_args(cls)
        overrides = dict(sampler.overrides)
        # The sampler name decides the sigma schedule: plain names turn Karras off even if
        # the model's own scheduler config had it on, k_ names turn it on where possible.
        for flag in _SIGMA_FLAGS:
            if flag in accepted:
                overrides[flag] = karras and flag == "use_karras_sigmas"
        if karras and "use_karras_sigmas" not in accepted:
            log.debug("%s has no Karras sigmas; %r runs without them", cls.__name__, name)
        return cls, overrides

    by_lower = {c.lower(): c for c in _diffusers_scheduler_names()}
    if lowered in by_lower:
        return _scheduler_class(by_lower[lowered]), {}
    raise _unknown_name(name)


def make_scheduler(name: str, current: Any) -> Any | None:
    """Build the scheduler ``name`` asks for from ``current``'s config; None keeps ``current``.

    ``current`` is the pipeline's scheduler (or None when it has none); its config is the
    base, so what the model was trained with carries over.
    """
    if not name or not name.strip():
        return None
    config = dict(current.config) if current is not None else {}
    current_class = type(current).__name__ if current is not None else ""
    return _build(name, config, current_class)


def _build(name: str, config: dict[str, Any], current_class: str) -> Any:
    cls, overrides = _resolve(name, config, current_class)
    overrides = {**overrides, **_CLASS_FIXUPS.get(cls.__name__, {})}
    scheduler = cls.from_config(config, **overrides)
    log.debug("scheduler %r -> %s (overrides %s)", name, cls.__name__, overrides)
    return scheduler


def apply_scheduler(pipe: Any, name: str) -> None:
    """Set ``pipe.scheduler`` to the one ``name`` asks for; an empty name keeps the current one.

    The config the pipeline was loaded with is remembered, so switching several times
    (``euler_a`` then ``ddim``) builds each from the model's config, not from the last
    sampler's. If something else replaced the scheduler since, that one becomes the base.
    """
    if not name or not name.strip():
        return
    current = getattr(pipe, "scheduler", None)
    try:
        remembered = _BASE_CONFIGS.get(pipe)
    except TypeError:  # not weak-referenceable
        remembered = None
    if remembered is not None and remembered[2] is current:
        config, base_class = remembered[0], remembered[1]
    else:
        config = dict(current.config) if current is not None else {}
        base_class = type(current).__name__ if current is not None else ""
    scheduler = _build(name, config, base_class)
    pipe.scheduler = scheduler
    try:
        _BASE_CONFIGS[pipe] = (config, base_class, scheduler)
    except TypeError:  # not weak-referenceable: just don't remember
        pass

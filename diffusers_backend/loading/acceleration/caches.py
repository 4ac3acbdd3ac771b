"""Training-free step caches (``cache:<name>``): reuse denoiser outputs between close steps.

Transformers use diffusers' own hooks (``denoiser.enable_cache(config)``); those hooks keep
their state per ``cache_context``, which only the pipelines that wrap each denoiser call in
``transformer.cache_context(...)`` set (Flux, Wan, LTX, Qwen-Image, CogVideoX, HunyuanVideo
and others), so a pipeline without it is refused rather than failing at the first request.
SD/SDXL UNets use :mod:`unet_cache` (``cache:deepcache``).

Caches that decide by a threshold (``first_block``) reuse only when the first block's
output barely changes, which happens with trained weights; the interval caches
(``taylorseer``, ``faster``, ``pab``, ``deepcache``) reuse on a schedule.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.acceleration import unet_cache


@dataclass(frozen=True)
class CacheKind:
    """One ``cache:`` value: what it is, its knob and default, and how it is applied."""

    name: str
    doc: str
    knob: str  # "cache_threshold" or "cache_interval"
    default: float
    transformer: bool  # True: diffusers' hooks on a transformer; False: a UNet


CACHES: dict[str, CacheKind] = {kind.name: kind for kind in (
    CacheKind("first_block", "First-Block Cache: skip the remaining blocks while the first "
              "block's residual changes less than the threshold", "cache_threshold", 0.05, True),
    CacheKind("taylorseer", "TaylorSeer: predict block outputs from a Taylor expansion, full "
              "compute every `cache_interval` steps", "cache_interval", 5, True),
    CacheKind("faster", "FasterCache: reuse attention outputs every other "
              "`cache_interval` steps", "cache_interval", 2, True),
    CacheKind("pab", "Pyramid Attention Broadcast: reuse attention outputs within the middle "
              "timesteps", "cache_interval", 2, True),
    CacheKind("deepcache", "DeepCache: reuse the UNet's deep features, full compute every "
              "`cache_interval` steps", "cache_interval", 3, False),
)}


@functools.lru_cache(maxsize=256)
def pipeline_sets_cache_context(pipe_class: type) -> bool:
    """Whether the pipeline's denoising loop wraps denoiser calls in ``cache_context``."""
    for cls in pipe_class.__mro__:
        call = cls.__dict__.get("__call__")
        if call is None:
            continue
        try:
            return "cache_context(" in inspect.getsource(call)
        except (OSError, TypeError):
            return False
    return False


# TaylorSeer on whole blocks (diffusers' default hooks only the attention inside them, so
# the feed-forward half of every block still ran at every step: 1.14x on the CPU bench, where
# whole blocks give the figure in docs/acceleration.md at a PSNR far above 25 dB).
_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")


def _block_patterns(denoiser: Any) -> list[str] | None:
    """Regexes of the denoiser's repeated blocks, or None (diffusers' default patterns)."""
    import torch

    found = [name for name in _BLOCK_LISTS
             if isinstance(getattr(denoiser, name, None), torch.nn.ModuleList)]
    return [rf"^{name}\.\d+$" for name in found] or None


def _config(kind: CacheKind, value: float, pipe: Any) -> Any:
    import diffusers

    def timestep() -> Any:
        return pipe.current_timestep

    makers: dict[str, Callable[[], Any]] = {
        "first_block": lambda: diffusers.FirstBlockCacheConfig(threshold=float(value)),
        "taylorseer": lambda: diffusers.TaylorSeerCacheConfig(
            cache_interval=int(value), cache_identifiers=_block_patterns(pipe.transformer)),
        # every denoiser call is one batch (no uncond-batch skipping): guidance-distilled
        "faster": lambda: diffusers.FasterCacheConfig(
            spatial_attention_block_skip_range=int(value), is_guidance_distilled=True,
            current_timestep_callback=timestep),
        "pab": lambda: diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=int(value), current_timestep_callback=timestep),
    }
    return makers[kind.name]()


def _refuse(kind: CacheKind, pipe: Any, why: str) -> LoadError:
    wanted = "a transformer pipeline that supports diffusers' caches (Flux, Wan, LTX, " \
        "Qwen-Image, CogVideoX, HunyuanVideo...)" if kind.transformer else \
        "a Stable Diffusion / SDXL UNet pipeline"
    return LoadError(f"cache:{kind.name} cannot apply to {type(pipe).__name__}: {why}; it "
                     f"needs {wanted}")


def apply_cache(pipe: Any, options: dict[str, Any]) -> str:
    """Enable the cache ``options['cache']`` names on the pipeline's denoiser; a log note."""
    kind = CACHES[options["cache"]]
    value = options.get(kind.knob, kind.default)
    other = "cache_threshold" if kind.knob == "cache_interval" else "cache_interval"
    if other in options:
        raise LoadError(f"option {other} does not apply to cache:{kind.name} (it takes "
                        f"{kind.knob})")
    if not kind.transformer:
        unet = getattr(pipe, "unet", None)
        if unet is None or not unet_cache.supports(unet):
            raise _refuse(kind, pipe, "it has no UNet with down, mid and up blocks")
        unet_cache.apply(pipe, int(value))
        return f"cache deepcache (interval {int(value)})"
    denoiser = getattr(pipe, "transformer", None)
    if denoiser is None or not hasattr(denoiser, "enable_cache"):
        what = "a UNet (use cache:deepcache)" if getattr(pipe, "unet", None) is not None \
            else "no denoiser that supports diffusers' cache hooks"
        raise _refuse(kind, pipe, f"it has {what}")
    if not pipeline_sets_cache_context(pipe.__class__):
        raise _refuse(kind, pipe, "its denoising loop sets no cache context")
    try:
        denoiser.enable_cache(_config(kind, value, pipe))
    except (ValueError, AttributeError, TypeError) as exc:
        raise _refuse(kind, pipe, f"diffusers refused it ({exc})") from exc
    return f"cache {kind.name} ({kind.knob.removeprefix('cache_')} {value})"


def has_step_cache(pipe: Any) -> bool:
    """Whether a step cache is on: its reuse follows one generation's steps, so the engine's
    step-level batching (rows at different steps in one denoiser call) must not serve it."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and getattr(transformer, "is_cache_enabled", False):
        return True
    return unet_cache.schedule_of(getattr(pipe, "unet", None)) is not None


def reset_cache_state(pipe: Any) -> None:
    """Forget cached features (after the warm-up call), so the next request starts afresh."""
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "_reset_stateful_cache"):
            module._reset_stateful_cache()  # noqa: SLF001 - diffusers' own reset, as its pipelines call it


def reused_steps(pipe: Any) -> int | None:
    """How many denoiser steps reused cached features so far (deepcache), else None."""
    schedule = unet_cache.schedule_of(getattr(pipe, "unet", None))
    return None if schedule is None else schedule.reused_steps

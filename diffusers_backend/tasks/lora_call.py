"""LoRA per request: the prompt's ``<lora:NAME:WEIGHT>`` tags become a validated
:class:`LoraSet` in the plan, and the pipeline thread turns that set on for the call only.

Rule with load-time LoRAs (``LoraAdapter(s)`` / ``LoraScale(s)``): they stay on at their
load-time scales and the tags add to them; a tag naming the same file as a load-time LoRA
sets that LoRA's weight instead (``<lora:x:0>`` turns a load-time ``x`` off for the request).
A tag of weight 0 for any other LoRA is dropped at validation: the plain picture, no file
read. After the call the pipeline is back to its load-time adapters (or to none), so a
tag-free request that follows gets the load-time picture again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers_backend.errors import InvalidArgument, short_message
from diffusers_backend.loading import lora_cache, lora_hotswap, lora_library, weight_guard
from diffusers_backend.loading.acceleration.compile import error_on_recompile_here
from diffusers_backend.loading.adapters import lora_plan
from diffusers_backend.prompts import lora_tags


@dataclass(frozen=True)
class LoraUse:
    """One tagged LoRA, resolved: its name, checked file and weight."""

    name: str
    path: str
    weight: float


@dataclass(frozen=True)
class LoraSet:
    """The tags of one request (possibly none), in the order written; hashable, so plans with
    equal sets share batches and denoising loops and others never do."""

    uses: tuple[LoraUse, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.uses)

    def key(self) -> tuple[tuple[str, float], ...]:
        return tuple((use.path, use.weight) for use in self.uses)


NO_LORAS = LoraSet()


def _load_time(loaded: Any) -> list[tuple[str, float, str]]:
    """(adapter name, scale, real path or reference) of each load-time LoRA, as
    ``adapters.load_loras`` named them."""
    spec = loaded.spec
    out: list[tuple[str, float, str]] = []
    for index, (reference, scale) in enumerate(lora_plan(spec)):
        local = weight_guard.local_weights(reference, spec.model_path, "LoRA", False)
        where = os.path.realpath(local) if local is not None else reference
        out.append((f"lora_{index}", scale, where))
    return out


def plan_loras(loaded: Any, prompt: str, negative: str, safetensors_only: bool,
               ) -> tuple[str, LoraSet]:
    """The prompt without tags and the request's validated LoRA set (request thread)."""
    lora_tags.refuse_in_negative(negative)
    clean, tags = lora_tags.split_tags(prompt)
    if not tags:
        return prompt, NO_LORAS
    if not hasattr(loaded.pipe, "load_lora_weights"):
        raise InvalidArgument(f"the loaded {type(loaded.pipe).__name__} takes no LoRA, so the "
                              "prompt's <lora:...> tags cannot be served")
    load_time = {where for _, _, where in _load_time(loaded)}
    uses: list[LoraUse] = []
    for tag in tags:
        path = os.path.realpath(lora_library.resolve(loaded.spec, tag.name, safetensors_only))
        if tag.weight == 0 and path not in load_time:
            continue
        uses.append(LoraUse(tag.name, path, tag.weight))
    return clean, LoraSet(tuple(uses))


def _activate(pipe: Any, names: list[str], weights: list[float]) -> None:
    if names:
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=weights)
    elif any(pipe.get_list_adapters().values()):
        pipe.disable_lora()


def _swap(loaded: Any, slot: lora_hotswap.Slot, loras: LoraSet, safetensors_only: bool,
          ) -> None:
    """Fill the slot with the tags' LoRAs; a tag on a load-time LoRA adds the difference to
    its load-time scale, which stays on as it is."""
    base = {where: scale for _, scale, where in _load_time(loaded)}
    uses = [(use.name, Path(use.path), use.weight - base.get(use.path, 0.0))
            for use in loras.uses]
    try:
        slot.swap(loaded.pipe, uses, safetensors_only)
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001 - the swap itself failed: say which set
        shown = ", ".join(f"{use.name}:{use.weight:g}" for use in loras.uses) or "no LoRA"
        raise InvalidArgument(f"the LoRA set {shown} cannot be hot-swapped into the compiled "
                              f"{type(loaded.pipe).__name__}: {short_message(exc)}") from None


@contextmanager
def applied(loaded: Any, loras: LoraSet, safetensors_only: bool) -> Iterator[None]:
    """Turn the request's LoRA set on for the calls inside (pipeline thread), then back to the
    load-time adapters. Nothing at all happens for a tag-free request, except on a compiled
    denoiser with a hot-swap slot (:mod:`~diffusers_backend.loading.lora_hotswap`): there every
    request swaps in its own set (zeros when tag-free) and adapters are never switched."""
    error_on_recompile_here()
    slot = lora_hotswap.slot_of(loaded.pipe)
    if slot is not None:
        _swap(loaded, slot, loras, safetensors_only)
        yield
        return
    if not loras:
        yield
        return
    pipe = loaded.pipe
    cache = lora_cache.cache_for(pipe, lora_cache.cache_size(loaded.spec.options))
    active: dict[str, float] = {}
    by_path: dict[str, str] = {}
    base = _load_time(loaded)
    for adapter, scale, where in base:
        active[adapter] = scale
        by_path[where] = adapter
    try:
        for use in loras.uses:
            known = by_path.get(use.path)
            adapter = known if known is not None else cache.ensure(
                pipe, use.name, Path(use.path), safetensors_only)
            active[adapter] = use.weight
        cache.evict(pipe, set(active))
        names = [name for name, weight in active.items() if weight != 0]
        try:
            _activate(pipe, names, [active[name] for name in names])
        except Exception as exc:  # noqa: BLE001 - e.g. a LoRA for a component the model lacks
            shown = ", ".join(f"{use.name}:{use.weight:g}" for use in loras.uses)
            raise InvalidArgument(f"the LoRA set {shown} cannot be applied to the loaded "
                                  f"{type(pipe).__name__}: {short_message(exc)}") from None
        yield
    finally:
        _activate(pipe, [name for name, _, _ in base], [scale for _, scale, _ in base])

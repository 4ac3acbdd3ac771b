"""LoRA adapters read onto a loaded pipeline for prompt tags, kept while they are used: an LRU
bounded by a count (the ``lora_cache`` option, default :data:`DEFAULT_SIZE`).

A LoRA is read once (``load_lora_weights(..., adapter_name=...)``, diffusers/PEFT) and stays
on the pipeline as an inactive adapter; a request turns it on with ``set_adapters`` for its
call only (:mod:`~diffusers_backend.tasks.lora_call`). When more are cached than the bound,
the least recently used adapter not needed by the running call is deleted
(``delete_adapters``). Counts of hits, misses, loads and evictions are kept in
:data:`STATS` for the metrics endpoint. Only the pipeline thread touches a cache.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers_backend.errors import InvalidArgument, short_message
from diffusers_backend.loading import weight_guard

log = logging.getLogger(__name__)
DEFAULT_SIZE = 8  # adapters kept per model; a rank-16 SDXL LoRA is ~50-200 MB of weights
ADAPTER_PREFIX = "tag_"


@dataclass
class CacheStats:
    """Counters since the process started (all models together)."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    cached: int = 0  # adapters held now, over every live pipeline


STATS = CacheStats()


def file_key(path: Path) -> tuple[str, int, int]:
    """A file by its real path and version: a LoRA replaced on disk is read again."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_mtime_ns, st.st_size


@dataclass
class AdapterCache:
    """The tag adapters one pipeline holds, least recently used first."""

    size: int
    adapters: OrderedDict[tuple[str, int, int], str] = field(default_factory=OrderedDict)
    counter: int = 0

    def ensure(self, pipe: Any, name: str, path: Path, safetensors_only: bool) -> str:
        """The adapter name of LoRA file ``path`` on ``pipe``, read now if not cached."""
        key = file_key(path)
        adapter = self.adapters.get(key)
        if adapter is not None:
            self.adapters.move_to_end(key)
            STATS.hits += 1
            return adapter
        STATS.misses += 1
        self.counter += 1
        adapter = f"{ADAPTER_PREFIX}{self.counter}"
        strict = weight_guard.strict(safetensors_only)
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name,
                                   adapter_name=adapter, **strict)
        except Exception as exc:  # noqa: BLE001 - the tag's LoRA does not fit this model
            STATS.load_failures += 1
            _forget(pipe, adapter)
            raise InvalidArgument(f"LoRA {name!r} cannot be applied to the loaded "
                                  f"{type(pipe).__name__}: {short_message(exc)}") from None
        STATS.loads += 1
        STATS.cached += 1
        self.adapters[key] = adapter
        log.info("LoRA %s read as adapter %s", name, adapter)
        return adapter

    def evict(self, pipe: Any, keep: set[str]) -> None:
        """Delete least recently used adapters beyond the bound, except those in ``keep``."""
        for key, adapter in list(self.adapters.items()):
            if len(self.adapters) <= self.size:
                return
            if adapter in keep:
                continue
            del self.adapters[key]
            _forget(pipe, adapter)
            STATS.evictions += 1
            STATS.cached -= 1
            log.info("LoRA adapter %s evicted (lora_cache %d)", adapter, self.size)


def _forget(pipe: Any, adapter: str) -> None:
    """Delete an adapter from every component that has it (none: nothing to do)."""
    listed = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {}
    if any(adapter in names for names in listed.values()):
        pipe.delete_adapters(adapter)


_CACHES: weakref.WeakKeyDictionary[Any, AdapterCache] = weakref.WeakKeyDictionary()


def _dropped(cache: AdapterCache) -> None:
    STATS.cached -= len(cache.adapters)


def cache_for(pipe: Any, size: int) -> AdapterCache:
    """The cache of ``pipe`` (made on first use; gone with the pipeline)."""
    cache = _CACHES.get(pipe)
    if cache is None:
        cache = _CACHES[pipe] = AdapterCache(size)
        weakref.finalize(pipe, _dropped, cache)
    return cache


def cache_size(options: dict[str, Any]) -> int:
    """The ``lora_cache`` option (checked at load by the option table), or the default."""
    value = options.get("lora_cache")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else DEFAULT_SIZE

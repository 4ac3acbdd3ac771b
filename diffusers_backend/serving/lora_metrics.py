"""LoRA adapter cache metrics (prompt tags): hits, misses, loads, evictions, read at scrape
time from :data:`~diffusers_backend.loading.lora_cache.STATS` (nothing per request)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from diffusers_backend.loading.lora_cache import STATS


class LoraCacheCollector(Collector):
    """The counters of the LoRA adapter LRU, as Prometheus series."""

    def collect(self) -> Iterator[Metric]:
        for name, value, doc in (
            ("hits", STATS.hits, "prompt-tag LoRAs found among the cached adapters"),
            ("misses", STATS.misses, "prompt-tag LoRAs not cached, so read from disk"),
            ("loads", STATS.loads, "LoRA files read onto a model as adapters"),
            ("load_failures", STATS.load_failures, "LoRA files that did not fit the model"),
            ("evictions", STATS.evictions, "cached adapters deleted (lora_cache bound)"),
        ):
            yield CounterMetricFamily(f"diffusers_lora_cache_{name}", doc, value=value)
        yield GaugeMetricFamily("diffusers_lora_cache_adapters",
                                "LoRA adapters cached now for prompt tags", value=STATS.cached)

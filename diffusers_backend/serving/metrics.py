"""Prometheus metrics (``DIFFUSERS_METRICS_ADDR``): a private registry and its HTTP endpoint.

Off unless the variable is set. Each server owns its own ``CollectorRegistry`` (never
prometheus_client's global one), so nothing else in the process can leak series into it.
Per-request hooks are a counter increment and a histogram observation; memory and state
are read only when Prometheus scrapes. With ``LOCALAI_GRPC_AUTH_TOKEN`` set the endpoint
asks for the same ``Authorization: Bearer <token>`` as the gRPC port, else answers 401.
The HTTP side (``metrics_http``) is one thread with bounded connections and timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from diffusers_backend.engine.timings import RequestTimings
from diffusers_backend.serving.lora_metrics import LoraCacheCollector
from diffusers_backend.serving.metrics_http import MetricsHttpServer, listen

log = logging.getLogger(__name__)
GENERATION_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1800)
QUEUE_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LOAD_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
STEP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
_SIZE_BUCKETS = tuple((side * side, f"<={side}x{side}")
                      for side in (256, 512, 768, 1024, 1536, 2048, 4096))
MemoryReader = Callable[[], tuple[int, dict[str, int]]]


def size_bucket(width: int, height: int) -> str:
    """A coarse label for an output size (few label values keep series counts small)."""
    pixels = width * height
    if pixels <= 0:
        return "unknown"
    for limit, name in _SIZE_BUCKETS:
        if pixels <= limit:
            return name
    return ">4096x4096"


class _RuntimeCollector(Collector):
    """Memory and model state, read at scrape time from the runtime (nothing per request)."""

    def __init__(self, memory: MemoryReader, state: Callable[[], int]) -> None:
        self._memory = memory
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield RSS, GPU memory (when CUDA is initialised) and the Status state."""
        try:
            rss, breakdown = self._memory()
        except Exception:  # noqa: BLE001 - a failed read must not fail the whole scrape
            log.debug("reading memory for metrics failed", exc_info=True)
        else:
            yield GaugeMetricFamily("diffusers_process_rss_bytes",
                                    "Resident memory of the backend process", value=rss)
            for key, name in (("gpu_allocated", "allocated"), ("gpu_reserved", "reserved")):
                if key in breakdown:
                    yield GaugeMetricFamily(f"diffusers_gpu_memory_{name}_bytes",
                                            f"GPU memory {name} by torch (CUDA)",
                                            value=breakdown[key])
        try:
            state = int(self._state())
        except Exception:  # noqa: BLE001
            return
        yield GaugeMetricFamily("diffusers_state", "Status state: -1 ERROR, 0 UNINITIALIZED, "
                                "1 BUSY, 2 READY", value=state)


class Metrics:
    """Every metric of one server, in that server's private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("diffusers_grpc_requests", "gRPC calls by method and status",
                                ["service", "method", "code"], registry=reg)
        self.rpc_seconds = Histogram("diffusers_grpc_request_duration_seconds",
                                     "gRPC call time, queue wait included", ["method"],
                                     buckets=GENERATION_SECONDS, registry=reg)
        self.generation_seconds = Histogram(
            "diffusers_generation_seconds",
            "Time from leaving the queue to the file written (prepare, pipeline, write)",
            ["pipeline", "size"], buckets=GENERATION_SECONDS, registry=reg)
        self.queue_wait = Histogram("diffusers_queue_wait_seconds",
                                    "Time a generation request waited for the pipeline",
                                    buckets=QUEUE_SECONDS, registry=reg)
        self.batch_size = Histogram("diffusers_batch_size",
                                    "Requests served by one image pipeline call",
                                    buckets=BATCH_SIZES, registry=reg)
        self.images = Counter("diffusers_images", "Images generated", ["pipeline"],
                              registry=reg)
        self.steps = Counter("diffusers_denoising_steps",
                             "Denoising steps run, summed over the images of each call",
                             ["pipeline"], registry=reg)
        self.load_seconds = Histogram("diffusers_model_load_seconds",
                                      "LoadModel time of successful loads",
                                      buckets=LOAD_SECONDS, registry=reg)
        self.loads = Counter("diffusers_model_loads", "LoadModel calls by result", ["result"],
                             registry=reg)
        self.queue_depth = Gauge("diffusers_queue_depth",
                                 "Generation requests waiting for the pipeline", registry=reg)
        self.active_batch = Histogram("diffusers_active_batch_size",
                                      "Requests sharing one denoising step (step-level "
                                      "batching)", buckets=BATCH_SIZES, registry=reg)
        self.step_seconds = Histogram("diffusers_denoising_step_seconds",
                                      "Time of one denoising step of a step-level batch",
                                      buckets=STEP_SECONDS, registry=reg)
        ProcessCollector(registry=reg)  # the standard process_* series (Linux)
        reg.register(LoraCacheCollector())  # prompt-tag LoRA adapters (serving/lora_metrics)

    def watch_runtime(self, memory: MemoryReader, state: Callable[[], int]) -> None:
        """Report memory and state of the runtime at each scrape."""
        self.registry.register(_RuntimeCollector(memory, state))

    # -- timings.Sink: called by the pipeline thread ---------------------------------
    def queue_changed(self, delta: int) -> None:
        """Requests waiting for the pipeline went up or down by ``delta``."""
        self.queue_depth.inc(delta)

    def pipeline_call(self, pipeline: str, batch: int, steps: int) -> None:
        """One image pipeline call made ``batch`` images of ``steps`` steps each."""
        self.batch_size.observe(batch)
        self.images.labels(pipeline).inc(batch)
        if steps > 0:
            self.steps.labels(pipeline).inc(batch * steps)

    def denoising_step(self, pipeline: str, active: int, seconds: float) -> None:
        """One step of a step-level batch served ``active`` requests in ``seconds``."""
        self.active_batch.observe(active)
        self.step_seconds.observe(seconds)
        self.steps.labels(pipeline).inc(active)

    # -- called by the RPC layer once per call -----------------------------------------
    def observe_rpc(self, service: str, method: str, code: str, seconds: float,
                    record: RequestTimings | None, response: Any) -> None:
        """Count a finished call and record its timings."""
        self.requests.labels(service, method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)
        if record is not None:
            if record.queue_s is not None:
                self.queue_wait.observe(record.queue_s)
            if code == "OK" and record.pipeline and record.pipeline_s is not None:
                busy = record.pipeline_s + (record.prepare_s or 0.0) + (record.write_s or 0.0)
                self.generation_seconds.labels(
                    record.pipeline, size_bucket(record.width, record.height)).observe(busy)
        if method == "LoadModel" and service == "backend.Backend":
            ok = code == "OK" and bool(getattr(response, "success", False))
            self.loads.labels("success" if ok else "failure").inc()
            if ok:
                self.load_seconds.observe(seconds)


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def start_http(metrics: Metrics, addr: str, token: str) -> tuple[MetricsHttpServer, str]:
    """Serve ``/metrics`` on ``addr`` from a daemon thread; return the server and its URL.

    Raises OSError when the address cannot be bound (start-up then fails with a message).
    """
    host, port = _split(addr)
    sock = listen(host, port)
    server = MetricsHttpServer(metrics.registry, token, sock)
    server.start()
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{bound_port}/metrics"


def start_metrics(metrics: Metrics, runtime: Any, addr: str, token: str) -> str:
    """Hook ``metrics`` to the runtime and the pipeline thread, serve them; return the URL."""
    from diffusers_backend.engine import timings

    metrics.watch_runtime(runtime.memory, lambda: int(runtime.state))
    try:
        _, url = start_http(metrics, addr, token)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {addr} (DIFFUSERS_METRICS_ADDR): "
                      f"{exc.strerror or exc}") from exc
    timings.set_sink(metrics)
    return url

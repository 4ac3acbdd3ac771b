"""Cost-aware admission and cancellation inside a step, in process on the real tiny SD.

The runtime loads the tiny SD as the server does (block checks installed, warm-up measured);
requests go through ``ModelRuntime.generate_image`` and the engine's pipeline thread, with a
probe standing in for the gRPC context (``is_active`` / ``time_remaining``).
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from diffusers_backend.engine import admission, progress
from diffusers_backend.engine.block_checks import watching
from diffusers_backend.engine.runtime import ModelRuntime
from diffusers_backend.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
)
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.image import plan_image
from diffusers_backend.tasks.jobs import ImageJob

ABANDONED_WITHIN = 0.5  # of a step's length: a cancelled step stops within half of it
MiB = 2**20


class Probe:
    """What the servicer hands the runtime: cancelled yet? seconds before the deadline?"""

    def __init__(self, time_left: float | None = None) -> None:
        self.cancelled = threading.Event()
        self._time_left = time_left

    def __call__(self) -> bool:
        return self.cancelled.is_set()

    def time_left(self) -> float | None:
        return self._time_left


@pytest.fixture(scope="module")
def runtime(tiny_sd):
    runtime = ModelRuntime(Settings(idle_release_s=0, max_side_factor=64))
    runtime.load(LoadSpec(model=str(tiny_sd)))
    yield runtime
    runtime.close()


def _job(tmp_path, name: str, side: int, steps: int = 1) -> ImageJob:
    return ImageJob(prompt="a red cube", width=side, height=side, steps=steps, seed=3,
                    dst=str(tmp_path / f"{name}.png"))


def test_a_side_far_above_the_native_size_is_refused_at_validation(runtime, tmp_path):
    loaded = runtime.engine.loaded
    job = ImageJob(prompt="x", width=10000, height=64, steps=1, dst=str(tmp_path / "a.png"))
    with pytest.raises(InvalidArgument, match=r"width 10000 is above the limit of 512 .*"
                       r"64 native x 8, DIFFUSERS_MAX_SIDE_FACTOR"):
        plan_image(loaded, job, Settings())
    plan = plan_image(loaded, ImageJob(prompt="x", width=512, height=64, steps=1,
                                       dst=str(tmp_path / "b.png")), Settings())
    assert (plan.width, plan.height) == (512, 64)


def test_the_load_measures_a_rate_before_the_first_request(runtime):
    book = admission.costs_of(runtime.engine.loaded.pipe)
    assert book.rate("denoiser") is not None and book.rate("decoder") is not None
    small = admission.estimate(runtime.engine.loaded, 64, 64, 2)
    large = admission.estimate(runtime.engine.loaded, 1024, 1024, 2)
    assert small.seconds is not None and large.seconds is not None
    assert small.from_warmup  # no request yet: the warm-up's rate, refused only far past
    assert large.seconds > 100 * small.seconds  # 256x the tokens, and attention's square
    assert large.memory_bytes > 100 * small.memory_bytes


def test_a_request_above_the_device_memory_is_resource_exhausted(runtime, tmp_path):
    settings = Settings(device_memory=64 * MiB)
    loaded = runtime.engine.loaded
    admission.check(loaded, 64, 64, 1, None, settings)
    with pytest.raises(ResourceExhausted, match=r"1024x1024 would need about .* GiB of "
                       r"memory, more than the 0.1 GiB the device has \(DIFFUSERS_DEVICE_MEMORY"):
        admission.check(loaded, 1024, 1024, 1, None, settings)


def test_a_request_estimated_past_its_deadline_fails_at_once(runtime, tmp_path):
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"1024x1024 with 20 steps is estimated to take "
                       r"[\d.]+s on this server, more than the 2.0s left"):
        runtime.generate_image(_job(tmp_path, "late", 1024, steps=20), Probe(time_left=2.0))
    assert time.monotonic() - started < 1.0
    assert not (tmp_path / "late.png").exists()
    runtime.generate_image(_job(tmp_path, "fits", 64), Probe(time_left=60.0))
    assert (tmp_path / "fits.png").exists()
    assert not admission.estimate(runtime.engine.loaded, 64, 64, 1).from_warmup


def test_a_long_single_step_is_abandoned_within_a_fraction_of_it(runtime, single_torch_thread):
    pipe = runtime.engine.loaded.pipe
    call = dict(prompt="x", num_inference_steps=1, width=160, height=160, output_type="latent")
    with watching(lambda: False):
        started = time.perf_counter()
        pipe(**call)
        step = time.perf_counter() - started
    cancelled = threading.Event()
    timer = threading.Timer(step * 0.3, cancelled.set)
    started = time.perf_counter()
    timer.start()
    with pytest.raises(Cancelled, match="inside a step"), watching(cancelled.is_set):
        pipe(**call)
    abandoned_after = time.perf_counter() - started - step * 0.3
    timer.cancel()
    assert abandoned_after < ABANDONED_WITHIN * step, (abandoned_after, step)


def test_the_vae_decode_stops_at_its_first_block_once_cancelled(runtime):
    pipe = runtime.engine.loaded.pipe
    book = admission.costs_of(pipe)
    decodes = len(book.calls["decoder"])
    cancelled = threading.Event()
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda *_: cancelled.set())
    try:
        with pytest.raises(Cancelled), watching(cancelled.is_set):
            pipe(prompt="x", num_inference_steps=1, width=64, height=64)
    finally:
        hook.remove()
    assert len(book.calls["decoder"]) == decodes  # the decode never finished


def test_memory_comes_back_after_a_cancelled_huge_request(runtime, tmp_path):
    """Resident memory (RSS, on the CPU) climbs during a 1024x1024 step and returns close to
    where it was once the request is cancelled inside it."""
    process = psutil.Process()
    runtime.generate_image(_job(tmp_path, "warm", 64), Probe())
    before = process.memory_info().rss
    probe = Probe()
    peak = [before]
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            runtime.generate_image(_job(tmp_path, "huge", 1024), probe)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and peak[0] - before < 150 * MiB:
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.02)
    probe.cancelled.set()
    worker.join(60)
    assert outcome and isinstance(outcome[0], Cancelled)
    after = process.memory_info().rss
    grew = peak[0] - before
    assert grew >= 150 * MiB, f"the request never grew memory ({grew / MiB:.0f} MiB)"
    assert after - before < 0.25 * grew, (before / MiB, peak[0] / MiB, after / MiB)
    assert not (tmp_path / "huge.png").exists()


def test_a_shared_step_goes_on_for_the_member_that_is_still_waiting(tiny_sd, tmp_path):
    """Step-level loop: cancelling one of two requests that share steps stops nothing for
    the other (the block checks fire only once every member is cancelled)."""
    shared = ModelRuntime(Settings(idle_release_s=0, step_batching=True, warmup=False))
    shared.load(LoadSpec(model=str(tiny_sd)))
    leaving, staying = Probe(), Probe()
    outcome: dict[str, object] = {}

    def run(name: str, probe: Probe) -> None:
        try:
            outcome[name] = shared.generate_image(_job(tmp_path, name, 64, steps=80), probe)
        except Cancelled as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=run, args=(name, probe))
               for name, probe in (("leaving", leaving), ("staying", staying))]
    watchers = [progress.HUB.watch(str(tmp_path / f"{name}.png"))
                for name in ("leaving", "staying")]
    try:
        for thread in threads:
            thread.start()
        for watcher in watchers:  # both admitted, inside their shared steps (80 take seconds)
            assert _a_step_reported(watcher)
        leaving.cancelled.set()
        for thread in threads:
            thread.join(120)
    finally:
        for watcher in watchers:
            progress.HUB.unwatch(watcher)
        shared.close()
    assert isinstance(outcome["leaving"], Cancelled)
    assert "image written" in str(outcome["staying"])
    assert (tmp_path / "staying.png").exists() and not (tmp_path / "leaving.png").exists()


def _a_step_reported(watcher: progress.Watcher) -> bool:
    """Wait (on the progress hub's events) until the watched request has run a step."""
    while (event := watcher.get(60)) is not None:
        if event.stage == progress.STEP:
            return True
        if event.stage in progress.ENDS:
            return False
    return False

"""The engine's scheduling, in process: batch formation, the batch window and its bounds,
cancellation inside a batch, out-of-memory splitting, output ordering, writers running beside
the next batch, idle memory release; and the batch sizer.

The engine here is the real one. The plans it runs are small stand-ins that record what the
engine asked of them (which batches, when), because the point is the engine's decisions; the
same engine runs real diffusers plans in the gRPC tests (test_engine_serving.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from diffusers_backend.engine.batch_sizer import BatchSizer
from diffusers_backend.engine.engine import Engine
from diffusers_backend.errors import Cancelled, InvalidArgument
from diffusers_backend.settings import Settings


@dataclass
class Recorder:
    """What the engine ran: batches (lists of plan names) with start times, and writes."""

    batches: list[list[str]] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    writes: list[tuple[str, float, float]] = field(default_factory=list)
    run_s: float = 0.0
    write_s: float = 0.0
    oom_above: int = 0  # batches larger than this raise out of memory
    replanned: list[tuple[str, object]] = field(default_factory=list)  # (plan, new model)
    running: threading.Event = field(default_factory=threading.Event)  # a batch has started


@dataclass(eq=False)
class StubPlan:
    name: str
    recorder: Recorder
    loaded: object
    key: tuple | None = ("txt2img",)
    pixels: int = 64 * 64
    seed: int = 0
    steps: int = 2

    def batch_key(self) -> tuple | None:
        return self.key

    def replan(self, loaded: object) -> StubPlan:
        self.recorder.replanned.append((self.name, loaded))
        return StubPlan(f"{self.name} replanned", self.recorder, loaded, self.key)

    @staticmethod
    def run(batch: list[StubPlan], variants: object, is_cancelled) -> list[str]:
        recorder = batch[0].recorder
        if recorder.oom_above and len(batch) > recorder.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        recorder.started.append(time.monotonic())
        recorder.batches.append([p.name for p in batch])
        recorder.running.set()
        time.sleep(recorder.run_s)
        return [f"output of {p.name}" for p in batch]

    def write(self, output: str) -> str:
        started = time.monotonic()
        time.sleep(self.recorder.write_s)
        self.recorder.writes.append((self.name, started, time.monotonic()))
        return output


class Loaded:
    """Stands in for a LoadedPipeline: the engine only reads ``pipe`` and compares identity."""

    pipe = object()


@pytest.fixture()
def make_engine():
    engines = []

    def make(releases: list | None = None, **settings) -> tuple[Engine, Loaded]:
        engine = Engine(Settings(**settings),
                        (lambda: releases.append(time.monotonic())) if releases is not None
                        else (lambda: None))
        loaded = Loaded()
        engine.swap(loaded)  # type: ignore[arg-type]
        engines.append(engine)
        return engine, loaded

    yield make


def _client(engine: Engine, plan: StubPlan, results: dict, validate_s: float = 0.0,
            cancelled=lambda: False, validating: threading.Event | None = None,
            ) -> threading.Thread:
    """A request thread: validation (``validate_s``), then submit, as the runtime does;
    ``validating`` is set once the engine counts it as arriving."""

    def serve() -> None:
        with engine.arriving() as arrival:
            if validating is not None:
                validating.set()
            time.sleep(validate_s)
            try:
                results[plan.name] = engine.submit(plan, cancelled, arrival)
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                results[plan.name] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


def _run_clients(engine, plans, validate_s=0.0, cancelled=None) -> dict:
    results: dict = {}
    threads = [_client(engine, plan, results, validate_s * i,
                       (cancelled or {}).get(plan.name, lambda: False))
               for i, plan in enumerate(plans)]
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_simultaneous_requests_become_one_batch(make_engine):
    """8 clients arriving within a few ms: one call of 8, not 1 + 7."""
    engine, loaded = make_engine(batch_window_ms=500)
    recorder = Recorder(run_s=0.05)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(8)]
    results = _run_clients(engine, plans, validate_s=0.005)
    assert [len(b) for b in recorder.batches] == [8]
    assert results == {p.name: f"output of {p.name}" for p in plans}  # each its own output


def test_the_auto_window_costs_a_lone_request_at_most_1_percent(make_engine):
    engine, loaded = make_engine()  # DIFFUSERS_BATCH_WINDOW_MS unset: adaptive
    recorder = Recorder(run_s=0.5)
    _run_clients(engine, [StubPlan("first", recorder, loaded)])
    idle, busy = engine.batch_windows()
    assert idle == pytest.approx(0.005, abs=0.002)  # 1 % of the 0.5 s call
    assert busy == pytest.approx(0.05, abs=0.001)  # 10 %, capped at 50 ms
    started = time.monotonic()
    assert _run_clients(engine, [StubPlan("alone", recorder, loaded)]) == {
        "alone": "output of alone"}
    assert time.monotonic() - started < 0.5 + 0.2


def test_the_auto_window_waits_for_requests_being_validated(make_engine):
    """The first of a burst is queued while the others are still being validated: it waits
    for them (up to the busy window), so the burst is one batch."""
    engine, loaded = make_engine()
    recorder = Recorder(run_s=0.5)
    _run_clients(engine, [StubPlan("warm", recorder, loaded)])
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(4)]
    # All four are being validated before the first is queued (a thread that starts late
    # on a busy machine would otherwise not count as arriving yet); they finish 10 ms apart,
    # beyond the idle window (5 ms) and within the busy one (50 ms).
    everyone_arriving = threading.Barrier(len(plans))
    results: dict = {}

    def serve(index: int, plan: StubPlan) -> None:
        with engine.arriving() as arrival:
            everyone_arriving.wait(timeout=10)
            time.sleep(0.01 * index)
            results[plan.name] = engine.submit(plan, lambda: False, arrival)

    threads = [threading.Thread(target=serve, args=item) for item in enumerate(plans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [len(b) for b in recorder.batches] == [1, 4]
    assert results == {p.name: f"output of {p.name}" for p in plans}


def test_the_window_is_bounded_by_a_slow_companion(make_engine):
    """A companion whose validation takes 3 s does not hold the first request 3 s."""
    engine, loaded = make_engine(batch_window_ms=100)
    recorder = Recorder()
    results: dict = {}
    validating = threading.Event()
    slow = _client(engine, StubPlan("slow", recorder, loaded), results, validate_s=3.0,
                   validating=validating)
    assert validating.wait(10)  # the engine knows a companion is on its way
    started = time.monotonic()
    fast = _client(engine, StubPlan("fast", recorder, loaded), results)
    fast.join(timeout=10)
    assert "fast" in results and time.monotonic() - started < 1.0
    slow.join(timeout=10)
    assert [len(b) for b in recorder.batches] == [1, 1]


def test_window_zero_runs_the_first_request_alone(make_engine):
    """Static batching (DIFFUSERS_BATCH_WINDOW_MS=0): the first runs as soon as it is queued."""
    engine, loaded = make_engine(batch_window_ms=0)
    recorder = Recorder(run_s=0.2)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(4)]
    _run_clients(engine, plans, validate_s=0.02)
    assert recorder.batches[0] == ["r0"]
    assert sum(len(b) for b in recorder.batches) == 4


def test_batches_respect_max_batch_and_keys(make_engine):
    engine, loaded = make_engine(batch_window_ms=300, max_batch=3)
    recorder = Recorder(run_s=0.05)
    plans = [StubPlan(f"a{i}", recorder, loaded) for i in range(5)]
    plans += [StubPlan(f"b{i}", recorder, loaded, key=("other size",)) for i in range(2)]
    plans += [StubPlan("solo", recorder, loaded, key=None)]
    results = _run_clients(engine, plans, validate_s=0.002)
    assert len(results) == 8
    assert all(len(b) <= 3 for b in recorder.batches)
    for batch in recorder.batches:
        assert len({name[0] for name in batch}) == 1  # never mixes keys
    assert ["solo"] in recorder.batches


def test_out_of_memory_splits_the_batch(make_engine):
    engine, loaded = make_engine(batch_window_ms=300)
    recorder = Recorder(oom_above=1)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(4)]
    results = _run_clients(engine, plans, validate_s=0.002)
    assert results == {p.name: f"output of {p.name}" for p in plans}
    assert all(len(b) == 1 for b in recorder.batches) and len(recorder.batches) == 4


def test_a_cancelled_request_inside_a_batch_is_answered_cancelled(make_engine):
    engine, loaded = make_engine(batch_window_ms=50)
    recorder = Recorder(run_s=0.4)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(3)]
    gone = threading.Event()
    # r1's client goes away once the batch runs (not before: it would not be taken).
    threading.Thread(target=lambda: recorder.running.wait(30) and gone.set()).start()
    results = _run_clients(engine, plans, validate_s=0.002, cancelled={"r1": gone.is_set})
    assert [len(b) for b in recorder.batches] == [3]
    assert isinstance(results["r1"], Cancelled)
    assert results["r0"] == "output of r0" and results["r2"] == "output of r2"


def test_writers_run_beside_the_next_batch(make_engine):
    """The pipeline thread does not wait for the previous outputs to be written."""
    engine, loaded = make_engine(batch_window_ms=0, max_batch=1)
    recorder = Recorder(run_s=0.05, write_s=0.4)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(2)]
    _run_clients(engine, plans)
    first_write = next(w for w in recorder.writes if w[0] == "r0")
    assert recorder.started[1] < first_write[2], "second call waited for the first write"


def test_idle_engine_gives_memory_back_once(make_engine):
    releases: list[float] = []
    engine, loaded = make_engine(releases, idle_release_s=0.1)
    recorder = Recorder()
    _run_clients(engine, [StubPlan("r0", recorder, loaded)])
    deadline = time.monotonic() + 10
    while not releases and time.monotonic() < deadline:  # the first idle period ends
        time.sleep(0.01)
    assert len(releases) == 1
    time.sleep(0.5)  # five more idle periods: nothing new to give back
    assert len(releases) == 1  # once per idle period, not every 0.1 s


def test_a_plan_validated_against_an_old_model_is_validated_again(make_engine):
    engine, loaded = make_engine()
    recorder = Recorder()
    stale = StubPlan("stale", recorder, loaded)
    newer = Loaded()
    engine.swap(newer)  # type: ignore[arg-type]
    assert engine.submit(stale, lambda: False) == "output of stale replanned"
    assert recorder.replanned == [("stale", newer)]
    assert recorder.batches == [["stale replanned"]]  # the new plan ran, not the stale one


def test_a_queued_request_is_planned_with_the_dispatch_it_was_validated_with(make_engine):
    """The runtime hands the engine its dispatch (an image request on a video model becomes a
    video plan): the engine replans with it, not with the plan's own kind."""
    engine, loaded = make_engine()
    recorder = Recorder()
    newer = Loaded()
    engine.swap(newer)  # type: ignore[arg-type]
    dispatched = []

    def dispatch(current: object) -> StubPlan:
        dispatched.append(current)
        return StubPlan("video plan", recorder, current, key=None)

    assert engine.submit(StubPlan("image plan", recorder, loaded), lambda: False,
                         replan=dispatch) == "output of video plan"
    assert dispatched == [newer] and recorder.replanned == []


def test_a_request_the_new_model_cannot_serve_is_refused_naming_the_change(make_engine):
    engine, loaded = make_engine()
    newer = Loaded()
    newer.identity = "tiny-video"  # type: ignore[attr-defined]
    engine.swap(newer)  # type: ignore[arg-type]

    def refuse(current: object) -> StubPlan:
        raise InvalidArgument("the loaded TextToVideoSDPipeline needs a prompt")

    with pytest.raises(InvalidArgument) as refused:
        engine.submit(StubPlan("stale", Recorder(), loaded), lambda: False, replan=refuse)
    assert "model changed to tiny-video while this request waited" in str(refused.value)
    assert "needs a prompt" in str(refused.value)


# -- batch sizer ------------------------------------------------------------------------------

def test_batch_sizer_without_cuda_is_the_fixed_count():
    sizer = BatchSizer(16)
    with sizer.measure(4, 512 * 512):
        pass
    assert sizer.limit(512 * 512) == 16


def test_batch_sizer_follows_free_memory():
    """The CUDA counters cannot run here: the free-memory reading is passed in, and the peak
    figures are what ``measure`` would read from torch.cuda on a GPU."""
    free = [8 * 2**30]
    sizer = BatchSizer(64, free_bytes=lambda: free[0])
    sizer.observe(images=1, pixels=512 * 512, peak_bytes=1 * 2**30)  # 1 GiB per 512px image
    assert sizer.limit(512 * 512) == 7  # 90 % of 8 GiB
    assert sizer.limit(1024 * 1024) == 1
    free[0] = 200 * 2**30
    assert sizer.limit(512 * 512) == 64  # capped by DIFFUSERS_MAX_BATCH
    sizer.out_of_memory(images=8, pixels=1024 * 1024)
    assert sizer.limit(1024 * 1024) <= 7

"""The engine's scheduling, in process: batch formation, the batch window and its bounds,
cancellation inside a batch, out-of-memory splitting, output ordering, writers running beside
the next batch, idle memory release; and the batch sizer.

The engine here is the real one. The plans it runs are small stand-ins that record what the
engine asked of them (which batches, when), because the point is the engine's decisions; the
same engine runs real diffusers plans in the gRPC tests (test_engine_serving.py).

Time is a :class:`ManualClock` handed to the engine: a stand-in call "takes" its seconds by
moving the clock, and a test waits for the engine's state (a batch window open, requests
queued, the engine idle) before moving it, so nothing here sleeps or races a timer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from diffusers_backend.engine.batch_sizer import BatchSizer
from diffusers_backend.engine.clock import ManualClock
from diffusers_backend.engine.engine import Engine
from diffusers_backend.errors import Cancelled, InvalidArgument
from diffusers_backend.settings import Settings


@dataclass
class Recorder:
    """What the engine ran: batches (lists of plan names) and their clock times, and writes."""

    clock: ManualClock
    batches: list[list[str]] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # the clock when each batch started
    writes: list[str] = field(default_factory=list)
    run_s: float = 0.0  # each call moves the clock this far (the call "takes" run_s)
    oom_above: int = 0  # batches larger than this raise out of memory
    replanned: list[tuple[str, object]] = field(default_factory=list)  # (plan, new model)
    running: threading.Event = field(default_factory=threading.Event)  # a batch has started
    during_run: Callable[[], object] | None = None  # called inside each call (a client leaving)
    hold_write: threading.Event | None = None  # the first call's write waits for this
    held_write_saw: list[bool] = field(default_factory=list)  # whether it came while writing


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
        recorder.started.append(recorder.clock.monotonic())
        recorder.batches.append([p.name for p in batch])
        recorder.running.set()
        if recorder.during_run is not None:
            recorder.during_run()
        recorder.clock.advance(recorder.run_s)
        return [f"output of {p.name}" for p in batch]

    def write(self, output: str) -> str:
        recorder = self.recorder
        recorder.writes.append(self.name)
        if recorder.hold_write is not None and self.name == recorder.batches[0][0]:
            recorder.held_write_saw.append(recorder.hold_write.wait(10))
        return output


class Loaded:
    """Stands in for a LoadedPipeline: the engine only reads ``pipe`` and compares identity."""

    pipe = object()


@pytest.fixture()
def make_engine():
    """An engine on a :class:`ManualClock` (``engine.clock``). The idle memory release is
    off unless asked for (``idle_release_s``), so the only timed waits are batch windows."""

    def make(releases: list | None = None, **settings) -> tuple[Engine, Loaded]:
        settings.setdefault("idle_release_s", 0)
        clock = ManualClock()
        engine = Engine(Settings(**settings),
                        (lambda: releases.append(clock.monotonic())) if releases is not None
                        else (lambda: None), clock=clock)
        loaded = Loaded()
        engine.swap(loaded)  # type: ignore[arg-type]
        return engine, loaded

    yield make


def _timed(waits: list[float]) -> list[float]:
    return [w for w in waits if w != math.inf]


def _client(engine: Engine, plan: StubPlan, results: dict, go: threading.Event | None = None,
            cancelled=lambda: False, validating: threading.Event | None = None,
            ) -> threading.Thread:
    """A request thread: validation (until ``go`` is set, if given), then submit, as the
    runtime does; ``validating`` is set once the engine counts it as arriving."""

    def serve() -> None:
        with engine.arriving() as arrival:
            if validating is not None:
                validating.set()
            if go is not None:
                assert go.wait(10)
            try:
                results[plan.name] = engine.submit(plan, cancelled, arrival)
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                results[plan.name] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


def _queued(engine: Engine, count: int) -> None:
    """Wait until ``count`` tickets are in the engine's queue (each push notifies)."""
    with engine.queue_lock:
        assert engine.queue_lock.wait_for(lambda: len(engine.scheduler.queue) == count, 10)


def _in_window(engine: Engine, queued: int) -> float:
    """Wait until the pipeline thread is in a batch window with ``queued`` tickets behind
    the first; the seconds of the window left."""
    clock = engine.clock
    assert clock.wait_until(lambda waits: len(_timed(waits)) == 1)  # type: ignore[attr-defined]
    _queued(engine, queued)
    (left,) = _timed(clock.pending())  # type: ignore[attr-defined]
    return left


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def _served_through_windows(engine: Engine, recorder: Recorder, plans: list[StubPlan],
                            window_s: float) -> dict:
    """Clients arriving together; the clock moves one window each time the engine waits in
    one, until every plan has run and the engine waits, untimed, for more."""
    results: dict = {}
    threads = [_client(engine, plan, results) for plan in plans]
    clock = engine.clock

    def all_ran() -> bool:
        return sum(len(batch) for batch in recorder.batches) == len(plans)

    while True:
        assert clock.wait_until(  # type: ignore[attr-defined]
            lambda waits: bool(_timed(waits)) or (all_ran() and waits == [math.inf]))
        if all_ran() and not _timed(clock.pending()):  # type: ignore[attr-defined]
            break
        clock.advance(window_s)  # type: ignore[attr-defined]
    _join(threads)
    return results


def test_simultaneous_requests_become_one_batch(make_engine):
    """8 clients arriving 5 ms apart inside a 500 ms window: one call of 8, not 1 + 7."""
    engine, loaded = make_engine(batch_window_ms=500)
    recorder = Recorder(engine.clock, run_s=0.05)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(8)]
    results: dict = {}
    threads = [_client(engine, plans[0], results)]
    assert _in_window(engine, 0) == pytest.approx(0.5)
    for index, plan in enumerate(plans[1:], start=1):
        engine.clock.advance(0.005)
        threads.append(_client(engine, plan, results))
        _queued(engine, index)
    engine.clock.advance(0.5 - 0.035 - 0.001)
    assert recorder.batches == []  # 1 ms before the window ends: still gathering
    assert _in_window(engine, 7) == pytest.approx(0.001)
    engine.clock.advance(0.001)
    _join(threads)
    assert [len(b) for b in recorder.batches] == [8]
    assert recorder.started == [pytest.approx(0.5)]  # the window's end, not later
    assert results == {p.name: f"output of {p.name}" for p in plans}  # each its own output


def test_the_auto_window_costs_a_lone_request_at_most_1_percent(make_engine):
    engine, loaded = make_engine()  # DIFFUSERS_BATCH_WINDOW_MS unset: adaptive
    recorder = Recorder(engine.clock, run_s=0.5)
    _join([_client(engine, StubPlan("first", recorder, loaded), {})])
    idle, busy = engine.batch_windows()
    assert idle == pytest.approx(0.005)  # 1 % of the 0.5 s call
    assert busy == pytest.approx(0.05)  # 10 %, capped at 50 ms
    results: dict = {}
    alone = _client(engine, StubPlan("alone", recorder, loaded), results)
    assert _in_window(engine, 0) == pytest.approx(0.005)  # it waits 1 % of a call, no more
    engine.clock.advance(0.005)
    _join([alone])
    assert results == {"alone": "output of alone"}
    assert recorder.started[-1] - recorder.started[0] == pytest.approx(0.5 + 0.005)


def test_the_auto_window_waits_for_requests_being_validated(make_engine):
    """The first of a burst is queued while the others are still being validated: it waits
    for them (up to the busy window), so the burst is one batch."""
    engine, loaded = make_engine()
    recorder = Recorder(engine.clock, run_s=0.5)
    _join([_client(engine, StubPlan("warm", recorder, loaded), {})])
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(4)]
    # All four are being validated before the first is queued; they finish 10 ms apart,
    # beyond the idle window (5 ms) and within the busy one (50 ms).
    results: dict = {}
    gates = [threading.Event() for _ in plans]
    validating = [threading.Event() for _ in plans]
    threads = [_client(engine, plan, results, go=gate, validating=entered)
               for plan, gate, entered in zip(plans, gates, validating, strict=True)]
    assert all(entered.wait(10) for entered in validating)
    gates[0].set()
    assert _in_window(engine, 0) == pytest.approx(0.05)  # the busy window: others arriving
    for index in range(1, 4):
        engine.clock.advance(0.01)
        gates[index].set()
        if index < 3:  # (the last one queued ends the window: nobody else is arriving)
            _queued(engine, index)
    _join(threads)
    assert [len(b) for b in recorder.batches] == [1, 4]
    assert results == {p.name: f"output of {p.name}" for p in plans}


def test_the_window_is_bounded_by_a_slow_companion(make_engine):
    """A companion whose validation takes long does not hold the first request longer than
    the window."""
    engine, loaded = make_engine(batch_window_ms=100)
    recorder = Recorder(engine.clock)
    results: dict = {}
    validating, slow_done = threading.Event(), threading.Event()
    slow = _client(engine, StubPlan("slow", recorder, loaded), results, go=slow_done,
                   validating=validating)
    assert validating.wait(10)  # the engine knows a companion is on its way
    fast = _client(engine, StubPlan("fast", recorder, loaded), results)
    assert _in_window(engine, 0) == pytest.approx(0.1)
    engine.clock.advance(0.1)
    _join([fast])
    assert results == {"fast": "output of fast"}  # the slow one is still validating
    slow_done.set()
    assert _in_window(engine, 0) == pytest.approx(0.1)  # alone, it waits its own window
    engine.clock.advance(0.1)
    _join([slow])
    assert [len(b) for b in recorder.batches] == [1, 1]


def test_window_zero_runs_the_first_request_alone(make_engine):
    """Static batching (DIFFUSERS_BATCH_WINDOW_MS=0): the first runs as soon as it is queued,
    even while others are being validated."""
    engine, loaded = make_engine(batch_window_ms=0)
    recorder = Recorder(engine.clock, run_s=0.2)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(4)]
    results: dict = {}
    gates = [threading.Event() for _ in plans]
    validating = [threading.Event() for _ in plans]
    threads = [_client(engine, plan, results, go=gate, validating=entered)
               for plan, gate, entered in zip(plans, gates, validating, strict=True)]
    assert all(entered.wait(10) for entered in validating)
    gates[0].set()
    assert recorder.running.wait(10)  # the clock never moved: no window at all
    assert recorder.batches[0] == ["r0"]
    for gate in gates[1:]:
        gate.set()
    _join(threads)
    assert sum(len(b) for b in recorder.batches) == 4


def test_batches_respect_max_batch_and_keys(make_engine):
    engine, loaded = make_engine(batch_window_ms=300, max_batch=3)
    recorder = Recorder(engine.clock, run_s=0.05)
    plans = [StubPlan(f"a{i}", recorder, loaded) for i in range(5)]
    plans += [StubPlan(f"b{i}", recorder, loaded, key=("other size",)) for i in range(2)]
    plans += [StubPlan("solo", recorder, loaded, key=None)]
    results = _served_through_windows(engine, recorder, plans, 0.3)
    assert len(results) == 8
    assert all(len(b) <= 3 for b in recorder.batches)
    for batch in recorder.batches:
        assert len({name[0] for name in batch}) == 1  # never mixes keys
    assert ["solo"] in recorder.batches


def test_out_of_memory_splits_the_batch(make_engine):
    engine, loaded = make_engine(batch_window_ms=300)
    recorder = Recorder(engine.clock, oom_above=1)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(4)]
    results: dict = {}
    threads = [_client(engine, plan, results) for plan in plans]
    _in_window(engine, 3)
    engine.clock.advance(0.3)  # one batch of 4: out of memory
    _join(threads)
    assert results == {p.name: f"output of {p.name}" for p in plans}
    assert all(len(b) == 1 for b in recorder.batches) and len(recorder.batches) == 4


def test_a_cancelled_request_inside_a_batch_is_answered_cancelled(make_engine):
    engine, loaded = make_engine(batch_window_ms=50)
    gone = threading.Event()
    # r1's client goes away while the batch runs (not before: it would not be taken).
    recorder = Recorder(engine.clock, run_s=0.4, during_run=gone.set)
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(3)]
    results: dict = {}
    threads = [_client(engine, plan, results, cancelled=gone.is_set if plan.name == "r1"
                       else (lambda: False)) for plan in plans]
    _in_window(engine, 2)
    engine.clock.advance(0.05)
    _join(threads)
    assert [len(b) for b in recorder.batches] == [3]
    assert isinstance(results["r1"], Cancelled)
    assert results["r0"] == "output of r0" and results["r2"] == "output of r2"


def test_writers_run_beside_the_next_batch(make_engine):
    """The pipeline thread does not wait for the previous outputs to be written: the first
    write is still going when the second call starts."""
    engine, loaded = make_engine(batch_window_ms=0, max_batch=1)
    second_call = threading.Event()
    recorder = Recorder(engine.clock, hold_write=second_call,
                        during_run=lambda: len(recorder.batches) == 2 and second_call.set())
    plans = [StubPlan(f"r{i}", recorder, loaded) for i in range(2)]
    results: dict = {}
    _join([_client(engine, plan, results) for plan in plans])
    assert results == {p.name: f"output of {p.name}" for p in plans}
    assert recorder.held_write_saw == [True], "second call waited for the first write"


def test_idle_engine_gives_memory_back_once(make_engine):
    releases: list[float] = []
    engine, loaded = make_engine(releases, idle_release_s=0.1)
    clock = engine.clock
    recorder = Recorder(clock)
    _join([_client(engine, StubPlan("r0", recorder, loaded), {})])
    assert clock.wait_until(lambda waits: waits == [pytest.approx(0.1)])  # idle, for 0.1 s
    assert releases == []
    clock.advance(0.1)  # the first idle period ends
    assert clock.wait_until(lambda waits: waits == [math.inf])  # idle, untimed, once more
    assert releases == [pytest.approx(0.1)]
    for _ in range(5):  # five more idle periods: nothing new to give back
        clock.advance(0.1)
    assert clock.pending() == [math.inf] and len(releases) == 1  # once per idle period


def test_a_plan_validated_against_an_old_model_is_validated_again(make_engine):
    engine, loaded = make_engine()
    recorder = Recorder(engine.clock)
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
    recorder = Recorder(engine.clock)
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
        engine.submit(StubPlan("stale", Recorder(engine.clock), loaded), lambda: False,
                      replan=refuse)
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

"""The engine's clock (engine/clock.py): the manual clock tests drive the engine with, the
system clock serving uses, and progress elapsed/ETA read from the hub's clock."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import pytest

from diffusers_backend.engine.clock import SYSTEM_CLOCK, ManualClock
from diffusers_backend.engine.progress import Hub


def _waiting(clock: ManualClock, timeout: float | None) -> tuple[threading.Condition,
                                                                  threading.Thread, list[bool]]:
    """A thread in ``clock.wait(condition, timeout)``, once the clock shows it waiting."""
    condition = threading.Condition()
    outcome: list[bool] = []

    def wait() -> None:
        with condition:
            outcome.append(clock.wait(condition, timeout))

    thread = threading.Thread(target=wait)
    thread.start()
    assert clock.wait_until(lambda waits: len(waits) == 1)
    return condition, thread, outcome


def test_a_timed_wait_ends_when_the_clock_reaches_its_deadline_and_not_before():
    clock = ManualClock(start=100.0)
    _, thread, outcome = _waiting(clock, 0.5)
    assert clock.pending() == [0.5]
    clock.advance(0.3)
    assert clock.pending() == [pytest.approx(0.2)] and outcome == []  # not due: still waiting
    clock.advance(0.2)
    thread.join(10)
    assert outcome == [False]  # timed out, as Condition.wait says
    assert clock.pending() == [] and clock.monotonic() == 100.5


def test_a_notify_ends_a_wait_early_and_an_untimed_wait_only_by_notify():
    clock = ManualClock()
    condition, thread, outcome = _waiting(clock, 0.5)
    with condition:
        condition.notify_all()
    thread.join(10)
    assert outcome == [True] and clock.monotonic() == 0.0
    condition, thread, outcome = _waiting(clock, None)
    assert clock.pending() == [math.inf]
    clock.advance(1e9)
    assert thread.is_alive() and outcome == []  # no deadline: time alone never ends it
    with condition:
        condition.notify_all()
    thread.join(10)
    assert outcome == [True]


def test_the_system_clock_is_the_real_one():
    condition = threading.Condition()
    before = SYSTEM_CLOCK.monotonic()
    with condition:
        assert SYSTEM_CLOCK.wait(condition, 0.01) is False
    assert SYSTEM_CLOCK.monotonic() - before >= 0.01


def test_progress_elapsed_and_eta_follow_the_hubs_clock():
    """Queued 2 s, then 3 s for the first of 4 steps: 5 s elapsed, 9 s to go."""
    clock = ManualClock()
    hub = Hub(clock)
    watcher = hub.watch()
    plan = SimpleNamespace(job=SimpleNamespace(dst="/out/a.png"), steps=4, width=64,
                           height=64, loaded=SimpleNamespace(spec=SimpleNamespace(options={})))
    track = hub.queued(plan)
    clock.advance(2)
    hub.started(track)
    clock.advance(3)
    hub.step(track, 1, 4)
    events = []
    while (event := watcher.get(0)) is not None:
        events.append(event)
    assert [(e.stage, e.elapsed_s, e.eta_s) for e in events] == [
        ("queued", 0.0, 0.0), ("started", 2.0, 0.0), ("step", 5.0, 9.0)]

"""The engine's scheduler on its own: no threads, no pipeline, only its decisions over plain
stand-in tickets (what the executor hands it: a plan with keys and pixels, a cancel flag)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from diffusers_backend.engine.scheduler import Scheduler
from diffusers_backend.settings import Settings


@dataclass
class Plan:
    key: tuple | None = ("txt2img", 64)
    step: tuple | None = ("steps", 64)
    pixels: int = 64 * 64

    def batch_key(self) -> tuple | None:
        return self.key


@dataclass(eq=False)
class Ticket:
    name: str
    plan: Plan
    cancelled: bool = False

    def is_cancelled(self) -> bool:
        return self.cancelled


def _scheduler(**settings) -> Scheduler:
    settings.setdefault("step_batching", True)
    return Scheduler(Settings(**settings), step_key_of=lambda plan: plan.step)


def _queue(scheduler: Scheduler, *tickets: Ticket) -> None:
    for ticket in tickets:
        scheduler.push(ticket)


def test_first_come_first_served():
    scheduler = _scheduler()
    _queue(scheduler, Ticket("a", Plan()), Ticket("b", Plan()))
    assert scheduler.pop().name == "a" and scheduler.pop().name == "b"
    assert scheduler.pop() is None


def test_companions_share_the_key_within_the_batch_limits():
    scheduler = _scheduler(max_batch=3)
    _queue(scheduler, Ticket("other", Plan(key=("other",))), Ticket("gone", Plan(), True),
           *[Ticket(f"r{i}", Plan()) for i in range(4)])
    taken = scheduler.companions(("txt2img", 64), 64 * 64)
    assert [t.name for t in taken] == ["r0", "r1"]  # the first + 2 = max_batch
    assert [t.name for t in scheduler.queue] == ["other", "gone", "r2", "r3"]


def test_companions_stop_at_the_pixel_budget():
    scheduler = _scheduler(max_batch_pixels=3 * 64 * 64)
    _queue(scheduler, *[Ticket(f"r{i}", Plan()) for i in range(5)])
    assert len(scheduler.companions(("txt2img", 64), 64 * 64)) == 2


def test_the_memory_aware_limit_caps_batches_and_steps():
    scheduler = _scheduler(max_batch=16)
    scheduler.sizer.bytes_per_pixel = 1.0
    scheduler.sizer._free_bytes = lambda: int(4 * 64 * 64 / 0.9) + 1  # room for 4 images
    assert scheduler.batch_limit(64 * 64) == 4
    _queue(scheduler, *[Ticket(f"r{i}", Plan()) for i in range(8)])
    assert len(scheduler.companions(("txt2img", 64), 64 * 64)) == 3
    assert len(scheduler.joiners(("steps", 64), 1, 64 * 64)) == 3


def test_windows_follow_the_last_call_and_arrivals():
    scheduler = _scheduler()
    scheduler.call_ran(2.0)
    idle, busy = scheduler.batch_windows()
    assert (idle, busy) == (0.02, 0.05)
    first = Ticket("first", Plan(step=None))  # a request-level batch
    assert scheduler.gather_wait(first, 0.0) == 0.02
    scheduler.arriving = 1
    assert scheduler.gather_wait(first, 0.01) == 0.04
    assert scheduler.gather_wait(first, 0.06) == 0.0
    assert scheduler.gather_wait(Ticket("solo", Plan(key=None)), 0.0) == 0.0


def test_a_request_that_starts_a_denoising_loop_never_waits_for_companions():
    """They join between its steps instead; a window would only delay a lone request."""
    for window in (None, 100):
        scheduler = _scheduler(batch_window_ms=window)
        scheduler.call_ran(2.0)
        scheduler.arriving = 3
        assert scheduler.gather_wait(Ticket("first", Plan()), 0.0) == 0.0
    off = _scheduler(step_batching=False)
    off.call_ran(2.0)
    off.arriving = 3
    assert off.gather_wait(Ticket("first", Plan()), 0.0) == 0.05  # request-level: it waits


def test_a_configured_window_and_a_full_batch():
    scheduler = _scheduler(batch_window_ms=100, max_batch=2)
    first = Ticket("first", Plan(step=None))
    assert scheduler.gather_wait(first, 0.0) == 0.1
    _queue(scheduler, Ticket("b", Plan()))
    assert scheduler.gather_wait(first, 0.0) == 0.0  # the batch is full: go


def test_joiners_come_from_the_head_only():
    """A request that cannot join stops joining, so it is not overtaken forever."""
    scheduler = _scheduler()
    _queue(scheduler, Ticket("a", Plan()), Ticket("video", Plan(key=None, step=None)),
           Ticket("b", Plan()))
    assert [t.name for t in scheduler.joiners(("steps", 64), 1, 64 * 64)] == ["a"]
    assert [t.name for t in scheduler.queue] == ["video", "b"]
    assert scheduler.joiners(("steps", 64), 2, 64 * 64) == []


def test_joiners_need_the_same_step_key_and_room():
    scheduler = _scheduler(max_batch=3)
    _queue(scheduler, *[Ticket(f"r{i}", Plan()) for i in range(4)])
    assert scheduler.joiners(("steps", 128), 1, 64 * 64) == []
    assert [t.name for t in scheduler.joiners(("steps", 64), 1, 64 * 64)] == ["r0", "r1"]


def test_step_batching_off_gives_no_step_key():
    assert _scheduler(step_batching=False).step_key(Plan()) is None


class _Loaded:
    def __init__(self, device: str) -> None:
        self.device = device


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_auto_step_batching_serves_step_by_step_on_every_device(device):
    """`auto` (the default) joins loops on a CPU too: measured there, sharing steps cut p50
    and p99 latency against request-level batches at equal throughput (docs/engine.md)."""
    plan = Plan()
    plan.loaded = _Loaded(device)
    assert Settings().step_batching is None
    assert _scheduler(step_batching=None).step_key(plan) == ("steps", 64)
    assert _scheduler(max_batch=1, step_batching=None).step_key(plan) is None
    assert _scheduler(step_batching=False).step_key(plan) is None


def test_out_of_memory_halves_and_a_single_one_fails():
    scheduler = _scheduler()
    assert scheduler.out_of_memory(8, 64 * 64) == 4
    assert scheduler.out_of_memory(2, 64 * 64) == 1
    assert scheduler.out_of_memory(1, 64 * 64) == 0


def test_evicted_tickets_go_back_to_the_head_in_order():
    scheduler = _scheduler()
    _queue(scheduler, Ticket("later", Plan()))
    scheduler.requeue_first([Ticket("x", Plan()), Ticket("y", Plan())])
    assert [t.name for t in scheduler.queue] == ["x", "y", "later"]


def test_a_new_model_forgets_what_memory_taught():
    scheduler = _scheduler()
    scheduler.sizer.bytes_per_pixel = 123.0
    scheduler.model_changed()
    assert scheduler.sizer.bytes_per_pixel is None


def test_cancelled_tickets_at_the_head_are_handed_over_not_counted():
    scheduler = _scheduler(max_batch=2)
    _queue(scheduler, Ticket("gone", Plan(), cancelled=True), Ticket("a", Plan()),
           Ticket("b", Plan()))
    taken = scheduler.joiners(("steps", 64), 1, 64 * 64)
    assert [t.name for t in taken] == ["gone", "a"]  # room for one live joiner
    assert [t.name for t in scheduler.queue] == ["b"]

"""The engine's scheduler: which waiting requests run next, and with whom.

It owns the queue, the batch windows, companion selection (request-level batches), joiners
(step-level batches), the memory-aware batch limit and the out-of-memory policy. It runs no
pipeline and starts no thread: every method is a decision over plain values, answered at
once, so it is unit-tested on its own (tests/unit/test_scheduler.py). The executor
(:class:`~diffusers_backend.engine.engine.Engine`) holds the lock around it, waits as long as
it says and runs what it returns. As in vLLM, the scheduler decides and the executor executes.

A queued item is a :class:`~diffusers_backend.engine.tickets.Ticket`: its ``plan``
(``batch_key()``, ``pixels``, optionally a step key through ``step_key_of``) and
``is_cancelled()`` are all the scheduler reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from diffusers_backend.engine.batch_sizer import BatchSizer
from diffusers_backend.engine.tickets import Plan, Ticket
from diffusers_backend.settings import Settings

AUTO_WINDOW_FRACTION = 0.1  # of the last pipeline call's time, while companions arrive...
AUTO_WINDOW_BOUNDS_S = (0.002, 0.05)  # ...held between these
IDLE_WINDOW_FRACTION = 0.01  # of the last call, when nobody else is arriving


class Scheduler:
    """Queue and batching decisions; see the module docstring."""

    def __init__(self, settings: Settings,
                 step_key_of: Callable[[Plan], tuple[Any, ...] | None] = lambda plan: None) -> None:
        self.settings = settings
        self.queue: deque[Ticket] = deque()
        self.arriving = 0  # requests being validated, whose tickets are on their way
        self.last_call_s = 0.0  # the last pipeline call (or denoising step run) took this
        self.sizer = BatchSizer(settings.max_batch)
        self._step_key_of = step_key_of

    # -- the queue ------------------------------------------------------------------------
    def push(self, ticket: Ticket) -> None:
        self.queue.append(ticket)

    def pop(self) -> Ticket | None:
        """The oldest ticket (first come, first served), or None."""
        return self.queue.popleft() if self.queue else None

    def requeue_first(self, tickets: list[Ticket]) -> None:
        """Put tickets back at the head of the queue, in their order (evicted after OOM)."""
        for ticket in reversed(tickets):
            self.queue.appendleft(ticket)

    def model_changed(self) -> None:
        """A new model: what the old one taught about memory no longer holds."""
        self.sizer = BatchSizer(self.settings.max_batch)

    # -- batch windows ------------------------------------------------------------------------
    def batch_windows(self) -> tuple[float, float]:
        """How long a batch about to start may wait: (in any case, while requests are still
        being validated), in seconds.

        ``DIFFUSERS_BATCH_WINDOW_MS`` set: that long in both cases. Auto (the default): while
        companions are on their way, 10 % of the last pipeline call (2 to 50 ms); otherwise
        1 % of it (a third of the 3 % overhead budget), long enough to catch a burst
        whose first request happened to be validated before the others arrived.
        """
        configured = self.settings.batch_window_ms
        if configured is not None:
            return configured / 1000.0, configured / 1000.0
        low, high = AUTO_WINDOW_BOUNDS_S
        busy = min(high, max(low, AUTO_WINDOW_FRACTION * self.last_call_s))
        return min(busy, IDLE_WINDOW_FRACTION * self.last_call_s), busy

    def gather_wait(self, first: Ticket, waited_s: float) -> float:
        """Seconds ``first`` should still wait for companions before its batch forms (0: go)."""
        if self.settings.max_batch <= 1 or first.plan.batch_key() is None:
            return 0.0
        if self.step_key(first.plan) is not None:  # companions join between steps instead
            return 0.0
        if len(self.queue) + 1 >= self.settings.max_batch:
            return 0.0
        idle, busy = self.batch_windows()
        limit = busy if self.arriving > 0 else idle
        return max(0.0, limit - waited_s)

    # -- request-level batches ----------------------------------------------------------------
    def batch_limit(self, pixels: int) -> int:
        """Images one call (or one denoising step) may carry: the memory-aware limit."""
        return max(1, min(self.sizer.limit(pixels), self.settings.max_batch))

    def companions(self, key: tuple[Any, ...], pixels: int) -> list[Ticket]:
        """Take queued tickets with batch key ``key`` to share the first's call, within the
        batch limits (count, memory, total pixels); cancelled ones stay for the executor."""
        limit = self.batch_limit(pixels)
        taken: list[Ticket] = []
        for ticket in list(self.queue):
            if len(taken) + 1 >= limit:
                break
            if ticket.is_cancelled() or ticket.plan.batch_key() != key:
                continue
            if pixels + ticket.plan.pixels > self.settings.max_batch_pixels:
                break
            self.queue.remove(ticket)
            pixels += ticket.plan.pixels
            taken.append(ticket)
        return taken

    # -- step-level batches -------------------------------------------------------------------
    def step_key(self, plan: Plan) -> tuple[Any, ...] | None:
        """The key of the running denoising loop this plan may join (None: it may not)."""
        if self.settings.max_batch <= 1 or not self._step_batching_on():
            return None
        return self._step_key_of(plan)

    def _step_batching_on(self) -> bool:
        """DIFFUSERS_STEP_BATCHING: off only when set to 0 (``auto`` and ``1`` are on; see
        docs/engine.md for the measurements behind the default)."""
        return self.settings.step_batching is not False

    def joiners(self, key: tuple[Any, ...], active: int, pixels: int) -> list[Ticket]:
        """Take tickets from the head of the queue that may join the running loop ``key``.

        First come, first served: joining stops at the first ticket that cannot join, so a
        request of another kind is never overtaken forever; the loop then drains and that
        request runs next. The loop never grows past the memory-aware limit. Cancelled
        tickets at the head are taken too (not counted), for the executor to answer.
        """
        room = self.batch_limit(pixels) - active
        taken: list[Ticket] = []
        while self.queue and len(taken) < room:
            ticket = self.queue[0]
            if ticket.is_cancelled():  # handed over so the executor answers it at once
                taken.append(self.queue.popleft())
                room += 1
                continue
            if self.step_key(ticket.plan) != key:
                break
            live = sum(1 for t in taken if not t.is_cancelled())
            if (active + live + 1) * pixels > self.settings.max_batch_pixels:
                break
            taken.append(self.queue.popleft())
        return taken

    # -- what calls taught ----------------------------------------------------------------
    def call_ran(self, seconds: float) -> None:
        self.last_call_s = seconds

    def out_of_memory(self, images: int, pixels: int) -> int:
        """A call (or step) of ``images`` ran out of memory: remember it and say how many of
        them to keep going together (0: none; fail the single one)."""
        self.sizer.out_of_memory(images, pixels)
        if images <= 1:
            return 0
        return max(1, min(images // 2, self.batch_limit(pixels)))

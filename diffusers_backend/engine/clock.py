"""The clock the engine decides by: the batch window, the idle memory release, the length
of a call (which sizes the auto window) and progress elapsed/ETA.

The engine reads time only through a :class:`Clock` handed to it (``Engine(..., clock=)``),
so tests drive it with a :class:`ManualClock` and wait on the engine's state instead of
sleeping; serving uses :data:`SYSTEM_CLOCK` (``time.monotonic`` and the condition's own
timed wait), so production behaviour is the plain one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Time as the engine reads it: now, and a timed wait on a condition."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        """``condition.wait(timeout)``: called with ``condition`` held; False once
        ``timeout`` seconds of this clock have passed without a notify."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and the condition's own timed wait."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        return condition.wait(timeout)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told (:meth:`advance`), for tests.

    A timed :meth:`wait` returns when its condition is notified, or once :meth:`advance`
    has carried the clock to its deadline. :meth:`pending` and :meth:`wait_until` show the
    waits in progress (the engine's state: in a batch window, idle, waiting for work), so a
    test waits for the engine to be where it expects before moving the clock, never sleeps.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._state = threading.Condition()
        self._waiters: list[tuple[threading.Condition, float]] = []

    def monotonic(self) -> float:
        with self._state:
            return self._now

    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        with self._state:
            entry = (condition, math.inf if timeout is None else self._now + timeout)
            self._waiters.append(entry)
            self._state.notify_all()
        try:
            # Registered while ``condition`` is held: advance() notifies through it, so it
            # cannot slip in between the registration and the wait.
            notified = condition.wait()
        finally:
            with self._state:
                self._waiters.remove(entry)
                self._state.notify_all()
        return notified and self.monotonic() < entry[1]

    def advance(self, seconds: float) -> None:
        """Move the clock on; wake the waits whose deadline it reaches."""
        with self._state:
            self._now += seconds
            due = {id(c): c for c, deadline in self._waiters if deadline <= self._now}
            self._state.notify_all()
        for condition in due.values():
            with condition:
                condition.notify_all()

    def pending(self) -> list[float]:
        """The waits in progress: seconds from now until each ends (inf: untimed)."""
        with self._state:
            return [deadline - self._now for _, deadline in self._waiters]

    def wait_until(self, predicate: Callable[[list[float]], bool],
                   timeout: float = 10.0) -> bool:
        """Block (at most ``timeout`` real seconds) until ``predicate(self.pending())``."""
        with self._state:
            return self._state.wait_for(
                lambda: predicate([d - self._now for _, d in self._waiters]), timeout)

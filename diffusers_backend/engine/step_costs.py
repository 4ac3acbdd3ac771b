"""How large a step-level batch is worth growing: learned from what its steps cost.

Sharing a denoising step pays where one step of several requests costs little more than one
(a GPU below its compute limit): every extra request is nearly free throughput. Where a step
costs about the sum of its members (a CPU, or a GPU past its limit), sharing buys no
throughput and turns the loop into processor sharing: every request in it slows down by the
number of members, and the slowest requests' latency (p99) grows with it. So under
``DIFFUSERS_STEP_BATCHING=auto`` the loop grows from ``b`` to ``b + 1`` requests only when
the measured step cost says one of these holds:

* one more request costs less than :data:`MARGINAL_SHARE` of what each member costs now
  (``c(b+1) - c(b) < 0.9 * c(b) / b``): batching still buys throughput;
* the bigger step still costs at most :data:`SLOWDOWN_BUDGET` lone steps
  (``c(b+1) <= 2 * c(1)``): a second lane, so a short request does not wait behind a long
  one, at no more than half speed for either.

A batch size never measured is tried once (one size past the largest known); a size judged
not worth it is tried again after :data:`RETRY_AFTER_STEPS` steps, so a slow spell of the
machine does not cap the loop for ever. ``DIFFUSERS_STEP_BATCHING=1`` skips all of this and
grows to the memory-aware limit. Plain values, no clock, no thread: unit-tested on its own
(tests/unit/test_step_costs.py); the executor reports each step's seconds.
"""

from __future__ import annotations

import statistics
from collections import deque

MARGINAL_SHARE = 0.9
SLOWDOWN_BUDGET = 2.0
SAMPLES = 8  # recent steps per batch size whose median is its cost
RETRY_AFTER_STEPS = 200


class StepCosts:
    """Measured seconds of one denoising step per batch size, for one kind of loop (one
    model and latent size)."""

    def __init__(self) -> None:
        self._samples: dict[int, deque[float]] = {}
        self._last_seen: dict[int, int] = {}  # batch size -> step number of its last sample
        self.steps = 0

    def record(self, batch: int, seconds: float) -> None:
        """A step of ``batch`` requests took ``seconds``."""
        if batch <= 0 or seconds <= 0:
            return
        self.steps += 1
        self._samples.setdefault(batch, deque(maxlen=SAMPLES)).append(seconds)
        self._last_seen[batch] = self.steps

    def cost(self, batch: int) -> float | None:
        """The median of the recent steps of ``batch`` requests; None if never measured."""
        samples = self._samples.get(batch)
        return statistics.median(samples) if samples else None

    def worth_growing(self, batch: int) -> bool:
        """Whether a step of ``batch + 1`` requests is worth running instead of ``batch``
        (or worth trying: never measured, or judged long enough ago)."""
        return self._verdict(batch) != "no"

    def _verdict(self, batch: int) -> str:
        """"yes" (measured and worth it), "try" (to be measured) or "no"."""
        bigger, now, lone = self.cost(batch + 1), self.cost(batch), self.cost(1)
        if bigger is None or now is None or lone is None:
            return "try"
        if bigger - now < MARGINAL_SHARE * now / batch or bigger <= SLOWDOWN_BUDGET * lone:
            return "yes"
        return "try" if self.steps - self._last_seen[batch + 1] >= RETRY_AFTER_STEPS else "no"

    def room(self, active: int, limit: int) -> int:
        """How many more requests may join a loop of ``active`` (at most ``limit`` in all).

        Grows size by size while that is worth it, and by one size to try (one never
        measured, or judged long ago), then stops. A loop of none has room for one.
        """
        size = max(active, 1)
        while size < limit:
            verdict = self._verdict(size)
            if verdict == "no":
                break
            size += 1
            if verdict == "try":
                break
        return size - active

"""What step sharing can do for p99 latency, by device cost curve: a queueing simulation.

No model, no clock: a discrete-event model of one pipeline thread serving Poisson arrivals
of mixed 4- and 25-step requests (half each), as bench_continuous.py sends them. Time is in
lone-step units; a step of ``b`` requests costs ``cost(b)``; each request also costs one
unit outside its steps (prompt encoding and decoding). Three cost curves:

* ``linear``: a step of b costs b lone steps (a compute-bound CPU, a GPU past its limit);
* ``this-cpu``: ``b ** 0.64``, the curve bench_continuous.py measured on the project's
  2-core dev VM for the tiny SD at 64x64 (b=2 1.5x, b=4 2.3x, b=8 3.6x, b=16 5.9x);
* ``gpu-like``: a step of b costs ``1 + 0.15 (b - 1)`` (a GPU below its compute limit).

Policies: ``request`` (today's request-level batching: the head of the queue plus queued
requests of the same step count share one call, up to 16), ``share all`` (step-level
batching as served: everyone waiting joins the running loop), ``share <= k`` (at most k in
the loop, first come first served), ``shortest <= k`` (at most k, shortest first) and
``one at a time``. Load levels are fractions of the request policy's saturation
throughput, as in bench_continuous.py. It prints p99 latency relative to ``request``.

Run: python bench/sim_step_sharing.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

Cost = Callable[[int], float]
Request = tuple[float, int]  # (arrival time, steps)
FIXED = 1.0  # per-request work outside the steps, in lone-step units
CURVES: dict[str, Cost] = {"linear": lambda b: float(b), "this-cpu": lambda b: b ** 0.64,
                           "gpu-like": lambda b: 1 + 0.15 * (b - 1)}


def arrivals(rate: float, count: int, seed: int) -> list[Request]:
    times, kinds = random.Random(seed), random.Random(seed + 1)
    now, out = 0.0, []
    for _ in range(count):
        now += times.expovariate(rate)
        out.append((now, kinds.choice((4, 25))))
    return out


def request_level(stream: list[Request], cost: Cost, max_batch: int = 16) -> list[float]:
    """Head of the queue plus queued requests of its step count, one call each."""
    now, i, queue, latencies = 0.0, 0, [], []
    while i < len(stream) or queue:
        if not queue:
            now = max(now, stream[i][0])
        while i < len(stream) and stream[i][0] <= now:
            queue.append(stream[i])
            i += 1
        head = queue.pop(0)
        batch = [head] + [r for r in queue if r[1] == head[1]][:max_batch - 1]
        for member in batch[1:]:
            queue.remove(member)
        now += head[1] * cost(len(batch)) + FIXED * len(batch)
        latencies += [now - r[0] for r in batch]
    return latencies


def step_level(stream: list[Request], cost: Cost, cap: int = 16,
               shortest_first: bool = False) -> list[float]:
    """A denoising loop that admits waiting requests between steps, up to ``cap``."""
    now, i, queue, active, latencies = 0.0, 0, [], [], []
    while i < len(stream) or queue or active:
        if not queue and not active:
            now = max(now, stream[i][0])
        while i < len(stream) and stream[i][0] <= now:
            queue.append(stream[i])
            i += 1
        while queue and len(active) < cap:
            pick = min(queue, key=lambda r: (r[1], r[0])) if shortest_first else queue[0]
            queue.remove(pick)
            active.append([pick, pick[1]])
            now += FIXED / 2
        now += cost(len(active))
        for member in active:
            member[1] -= 1
        for member in [m for m in active if m[1] == 0]:
            active.remove(member)
            now += FIXED / 2
            latencies.append(now - member[0][0])
    return latencies


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[round(0.99 * (len(ordered) - 1))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    policies: dict[str, Callable[[list[Request], Cost], list[float]]] = {
        "share all": step_level,
        "share <= 2": lambda s, c: step_level(s, c, cap=2),
        "share <= 8": lambda s, c: step_level(s, c, cap=8),
        "shortest <= 2": lambda s, c: step_level(s, c, cap=2, shortest_first=True),
        "one at a time": lambda s, c: step_level(s, c, cap=1),
    }
    for curve, cost in CURVES.items():
        burst = arrivals(1e9, 4000, seed=5)
        capacity = len(burst) / max(request_level(burst, cost))
        print(f"{curve}: request-level saturation {capacity:.3f} requests per lone step")
        for level in (0.5, 0.8, 0.95):
            stream = arrivals(level * capacity, args.requests, seed=1)
            base = p99(request_level(stream, cost))
            ratios = "  ".join(f"{name} {p99(run(stream, cost)) / base:.2f}"
                               for name, run in policies.items())
            print(f"  {level:>4.0%} p99 / request-level: {ratios}")


if __name__ == "__main__":
    main()

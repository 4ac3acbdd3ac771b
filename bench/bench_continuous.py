"""Step-level (continuous) vs request-level batching under Poisson arrivals, in one run.

Two engines serve the same model in this process: one with ``DIFFUSERS_STEP_BATCHING`` at
its default (``auto``: step-level) and one with it off (``0``: request-level batches only,
the baseline). Both get the same request stream: mixed
4- and 25-step text-to-image requests (half each, seeds and prompts differ) arriving as a
Poisson process at about 50 %, 80 % and 95 % of capacity.

Capacity is the baseline's: the request-level engine's saturation throughput (every request
queued at once, so it batches as fully as it ever can), measured first. A server that
batches sustains several times the rate of one that runs one request at a time, so a load
level relative to one-at-a-time service (``--capacity one-at-a-time``, printed too) would
leave a batching server mostly idle and measure nothing. Each stream is cut into
``--chunks`` parts served by every mode in turn, the order rotating part by part, so a
slow spell of the machine hits every mode alike. Reported per mode and level: p50 and p99
latency (arrival to file written) and throughput; then the saturation throughput and
lone-request latency (the median of ``--repeats`` alternating calls).

Run: .venv/bin/python bench/bench_continuous.py            (tiny SD, CPU, ~2 min idle)
     .venv/bin/python bench/bench_continuous.py --model PATH --size 512 --requests 60  (GPU)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = (4, 25)
LEVELS = (0.5, 0.8, 0.95)


def make_runtime(model: str, step_batching: bool | None, cuda: bool = False):
    from diffusers_backend.engine.runtime import ModelRuntime
    from diffusers_backend.loading.spec import LoadSpec
    from diffusers_backend.settings import Settings

    runtime = ModelRuntime(Settings(step_batching=step_batching, max_batch=16,
                                    idle_release_s=0))
    runtime.load(LoadSpec(model=model, cuda=cuda, f16=cuda))
    return runtime


def serve(runtime, folder: Path, index: int, steps: int, size: int) -> float:
    """One request, end to end (validation, queue, denoising, PNG written); its latency."""
    from diffusers_backend.tasks.jobs import ImageJob

    job = ImageJob(prompt=f"a cube number {index}", seed=1000 + index, steps=steps,
                   width=size, height=size, dst=str(folder / f"{index}.png"))
    started = time.monotonic()
    runtime.generate_image(job, lambda: False)
    return time.monotonic() - started


def mixed_steps(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    steps = [STEPS[i % 2] for i in range(count)]
    rng.shuffle(steps)
    return steps


def poisson_run(runtime, folder: Path, rate: float, steps: list[int], size: int,
                seed: int) -> tuple[list[float], float]:
    """Requests arriving at ``rate`` per second (exponential gaps); latencies, throughput."""
    rng = random.Random(seed)
    latencies: list[float] = [0.0] * len(steps)
    threads = []
    started = time.monotonic()
    for index, count in enumerate(steps):
        def one(i: int = index, n: int = count) -> None:
            latencies[i] = serve(runtime, folder, i, n, size)

        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
        time.sleep(rng.expovariate(rate))
    for thread in threads:
        thread.join()
    return latencies, len(steps) / (time.monotonic() - started)


def step_cost_curve(runtime, size: int, sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
                    repeats: int = 5) -> dict[int, float]:
    """Seconds of one denoising step of ``b`` requests (median of ``repeats``), run by the
    engine's own loop on the loaded pipeline: the curve that decides whether sharing steps
    pays. Where a step of 8 costs about 8 single steps (compute-bound, a CPU) sharing steps
    only reorders work; where it costs little more than one (a GPU) it multiplies
    throughput."""
    import torch

    from diffusers_backend.tasks import denoise

    pipe = runtime.engine.loaded.pipe
    loop = denoise.loop_for(pipe)
    curve = {}
    with torch.no_grad():
        for b in sizes:
            slots = [loop.admit(pipe, dict(prompt=f"a cube {i}", num_inference_steps=repeats + 1,
                                           width=size, height=size, guidance_scale=7.5,
                                           generator=torch.Generator("cpu").manual_seed(i)))
                     for i in range(b)]
            loop.step(pipe, slots)  # warm-up
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                loop.step(pipe, slots)
                samples.append(time.perf_counter() - started)
            curve[b] = statistics.median(samples)
    return curve


def interleaved(modes: dict, folder: Path, rate: float, steps: list[int], size: int,
                seed: int, chunks: int) -> dict[str, tuple[list[float], float]]:
    """The stream cut into ``chunks`` consecutive parts; each part is served by every mode
    in turn, the order rotating part by part, so a slow spell of a shared machine (minutes
    long on a VM) hits every mode alike. Per mode: all latencies, throughput over its parts."""
    names = list(modes)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    busy: dict[str, float] = dict.fromkeys(names, 0.0)
    per_chunk = -(-len(steps) // chunks)
    for chunk in range(chunks):
        part = steps[chunk * per_chunk:(chunk + 1) * per_chunk]
        if not part:
            break
        for name in names[chunk % len(names):] + names[:chunk % len(names)]:
            samples, throughput = poisson_run(modes[name], folder, rate, part, size,
                                              seed=seed * 1000 + chunk)
            latencies[name] += samples
            busy[name] += len(part) / throughput
    return {name: (latencies[name], len(latencies[name]) / busy[name]) for name in names}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def lone_latencies(modes: dict, folder: Path, size: int, repeats: int
                   ) -> dict[str, dict[int, float]]:
    """Median lone-request latency per mode and step count; the modes alternate call by
    call, so a slow spell of the machine hits both."""
    samples: dict[str, dict[int, list[float]]] = {name: {n: [] for n in STEPS} for name in modes}
    for r in range(repeats):
        for n in STEPS:
            for name, runtime in modes.items():
                samples[name][n].append(serve(runtime, folder, 900 + r, n, size))
    return {name: {n: statistics.median(v) for n, v in per.items()}
            for name, per in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="model folder (default: tiny SD)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=40, help="per mode and load level")
    parser.add_argument("--repeats", type=int, default=9, help="lone requests per step count")
    parser.add_argument("--chunks", type=int, default=4,
                        help="parts of each stream, served by the modes in rotating order")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS),
                        help="load levels, fractions of capacity")
    parser.add_argument("--capacity", choices=("saturation", "one-at-a-time"),
                        default="saturation", help="what the load levels are relative to")
    args = parser.parse_args(argv)
    model = args.model
    if not model:
        from tiny_models import tiny_sd_path

        model = str(tiny_sd_path())
    import torch

    cuda = torch.cuda.is_available()
    modes = {"step-level": make_runtime(model, None, cuda),
             "request-level": make_runtime(model, False, cuda)}
    folder = Path(tempfile.mkdtemp(prefix="bench-continuous-"))
    for runtime in modes.values():  # warm-up
        serve(runtime, folder, 0, 2, args.size)
        serve(runtime, folder, 0, 2, args.size)
    curve = step_cost_curve(modes["step-level"], args.size)
    print("one denoising step of b requests (CFG, so 2b rows): " + ", ".join(
        f"b={b} {seconds * 1000:.0f} ms ({seconds / curve[1]:.1f}x)"
        for b, seconds in curve.items()), flush=True)
    lone = lone_latencies(modes, folder, args.size, args.repeats)
    steps = mixed_steps(args.requests, 99)
    saturation = {name: throughput for name, (_, throughput) in interleaved(
        modes, folder, 1e6, steps, args.size, 99, args.chunks).items()}
    one_at_a_time = 1.0 / statistics.mean(lone["request-level"][n] for n in STEPS)
    capacity = (one_at_a_time if args.capacity == "one-at-a-time"
                else saturation["request-level"])
    device = "cuda (float16)" if cuda else "cpu"
    print(f"model {model} {args.size}x{args.size} on {device}; mixed steps {STEPS}; "
          f"{args.requests} requests per mode and level")
    print(f"capacity {capacity:.2f} req/s ({args.capacity}); request-level saturation "
          f"{saturation['request-level']:.2f} req/s, one at a time {one_at_a_time:.2f} req/s")
    print(f"{'load':>5} {'mode':>14} {'p50 s':>8} {'p99 s':>8} {'req/s':>7}")
    results: dict[tuple[float, str], tuple[float, float, float]] = {}
    for level_index, level in enumerate(args.levels):
        steps = mixed_steps(args.requests, level_index)
        served = interleaved(modes, folder, level * capacity, steps, args.size, level_index,
                             args.chunks)
        for name, (latencies, throughput) in served.items():
            row = (percentile(latencies, 0.5), percentile(latencies, 0.99), throughput)
            results[(level, name)] = row
            print(f"{level:>5.0%} {name:>14} {row[0]:>8.3f} {row[1]:>8.3f} {row[2]:>7.2f}",
                  flush=True)
        request_p99 = results[(level, "request-level")][1]
        for name in modes:
            if name != "request-level":
                print(f"{'':>5} {'p99 ratio':>14} {results[(level, name)][1] / request_p99:>8.2f}"
                      f" ({name} / request-level)")
    for name in modes:
        print(f"saturation {name:>14}: {saturation[name]:.2f} req/s")
    for name in modes:
        if name != "request-level":
            print(f"saturation ratio {name} / request-level: "
                  f"{saturation[name] / saturation['request-level']:.2f}")
    for name in modes:
        print(f"lone {name:>14}: " + ", ".join(f"{n} steps {lone[name][n]:.3f} s"
                                               for n in STEPS))
    for name in modes:
        if name != "request-level":
            print(f"lone ratio {name} / request-level: " + ", ".join(
                f"{n} steps {lone[name][n] / lone['request-level'][n]:.3f}" for n in STEPS))


if __name__ == "__main__":
    main()

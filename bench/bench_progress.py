"""Per-step cost of live progress (engine/progress.py): nobody watching, a watcher, a watcher
with previews, against the step callback as it was before (the cancel check alone).

    .venv/bin/python -u bench/bench_progress.py [--rounds 8] [--steps 4] [--size 128]

In process, random-weight SD pipelines: the tests' tiny SD at 64x64 and a larger
128/256/256-channel UNet at ``--size`` (bench_admission's), where a step costs what a small
real model's does on a CPU; ``--models accel`` adds bench_accel's SD (3-block 32/64/64 UNet,
tiny VAE; slow at 256x256 on one thread: attention over the full 32x32 latent).
The same seed and prompt every run. The box is shared and busy, so a step is measured in CPU
time of the calling thread (``time.thread_time_ns``, torch held to one thread so that all of
the step's work is on it), not wall time: the time from one step callback to the next (the
denoiser call, the scheduler, and the previous step's report and preview), averaged over
the steps after the first of one call. The modes are interleaved round by round (order
reversed every other round); each gets the median and interquartile range over
``--rounds``, and its ratio to "before" (of the medians, and the median of the per-round
ratios). Thread CPU time still varies with cache and memory-bandwidth contention from the
other processes: the IQR shows how much. Then the preview itself (the linear latent-to-RGB
map and the PNG) timed alone on real families' latent sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from bench_accel import sd_path  # noqa: E402
from bench_admission import build_larger_sd, quartiles  # noqa: E402

MODES = ("before: cancel check only", "nobody watching", "watcher, no previews",
         "watcher, previews every step")


def _plan(size: int, steps: int) -> SimpleNamespace:
    spec = SimpleNamespace(options={"preview_every": 1})
    return SimpleNamespace(job=SimpleNamespace(dst="/bench/out.png"), steps=steps,
                           width=size, height=size, loaded=SimpleNamespace(spec=spec))


def run_mode(pipe, mode: str, size: int, steps: int) -> float:
    """CPU seconds per step (of the calling thread) of one pipeline call in ``mode``, from
    the first step callback to the last."""
    import torch

    from diffusers_backend.engine import progress
    from diffusers_backend.tasks import calls

    hub = progress.HUB
    watcher = None
    calls.step_reporter = None if mode == MODES[0] else progress.call_step
    if mode in MODES[2:]:
        watcher = hub.watch(previews=mode == MODES[3])
    track = hub.queued(_plan(size, steps))
    progress.running([track])
    marks: list[int] = []
    inner = calls.cancel_callback(lambda: False)

    def timed_callback(*args: object) -> object:
        marks.append(time.thread_time_ns())
        return inner(*args)

    try:
        pipe("a red fox in the snow", num_inference_steps=steps, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(1), output_type="latent",
             callback_on_step_end=timed_callback)
        seconds = (marks[-1] - marks[0]) / 1e9 / (len(marks) - 1)
    finally:
        progress.running([])
        hub.finished(track, "done")
        if watcher is not None:
            assert mode != MODES[3] or any(e.preview_png for e in _drain(watcher))
            hub.unwatch(watcher)
    return seconds


def _drain(watcher) -> list:
    events = []
    while (event := watcher.get(0)) is not None:
        events.append(event)
    return events


def preview_costs(repeats: int) -> list[tuple[str, str, float]]:
    """Milliseconds per preview for the tiny SD's latents (its VAE halves the side) and
    latent sizes of real families' 1024x1024 (SD: 512)."""
    import torch
    from diffusers import FluxPipeline

    from diffusers_backend.engine.previews import preview_png

    sd = type("StableDiffusionPipeline", (), {})()
    sdxl = type("StableDiffusionXLPipeline", (), {})()
    flux = FluxPipeline.__new__(FluxPipeline)
    flux.vae_scale_factor = 8
    cases = (("tiny SD, 64x64", "(4, 32, 32)", sd, torch.randn(4, 32, 32), 64),
             ("SD 1.5, 512x512", "(4, 64, 64)", sd, torch.randn(4, 64, 64), 512),
             ("SDXL, 1024x1024", "(4, 128, 128)", sdxl, torch.randn(4, 128, 128), 1024),
             ("Flux, 1024x1024", "packed (4096, 64)", flux, torch.randn(4096, 64), 1024))
    rows = []
    for name, shape, pipe, latents, size in cases:
        preview_png(pipe, latents, size, size)
        started = time.perf_counter()
        for _ in range(repeats):
            assert preview_png(pipe, latents, size, size)
        rows.append((name, shape, (time.perf_counter() - started) / repeats * 1000))
    return rows


def model_rows(name: str, pipe, size: int, steps: int, rounds: int) -> None:
    run_mode(pipe, MODES[0], size, 2)  # warm-up
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            times[mode].append(run_mode(pipe, mode, size, steps))
    base = times[MODES[0]]
    print(f"\n{name}, {size}x{size}, {steps} steps: CPU ms per step of the calling thread, "
          f"{rounds} interleaved rounds")
    print(f"{'mode':32} {'median':>8} {'IQR':>17} {'vs before':>10} "
          f"{'per-round ratio, median [IQR]':>31}")
    for mode in MODES:
        q1, median, q3 = quartiles(times[mode])
        r1, ratio, r3 = quartiles([v / b for v, b in zip(times[mode], base, strict=True)])
        print(f"{mode:32} {median * 1000:8.2f} {q1 * 1000:8.2f}-{q3 * 1000:<8.2f} "
              f"{(median / statistics.median(base) - 1) * 100:+9.2f}% "
              f"{100 * (ratio - 1):+13.2f}% [{100 * (r1 - 1):+.2f}, {100 * (r3 - 1):+.2f}]")


def callback_costs(calls_n: int = 100_000) -> dict[str, float]:
    """Nanoseconds of thread CPU time one step callback costs in the first three modes,
    called directly (best of 5): what a step pays for progress, free of the step's own
    noise. The fourth mode's extra is the preview, timed below."""
    import torch

    from diffusers_backend.engine import progress
    from diffusers_backend.tasks import calls

    hub = progress.HUB
    pipe = SimpleNamespace(_num_timesteps=calls_n)
    kwargs = {"latents": torch.zeros(1, 4, 8, 8)}
    costs = {}
    for mode in MODES[:3]:
        calls.step_reporter = None if mode == MODES[0] else progress.call_step
        watcher = hub.watch() if mode == MODES[2] else None
        track = hub.queued(_plan(64, calls_n))
        progress.running([track])
        callback = calls.cancel_callback(lambda: False)
        best = float("inf")
        for _ in range(5):
            started = time.thread_time_ns()
            for step in range(calls_n):
                callback(pipe, step, None, kwargs)
            best = min(best, (time.thread_time_ns() - started) / calls_n)
            if watcher is not None:
                _drain(watcher)
        progress.running([])
        hub.finished(track, "done")
        if watcher is not None:
            hub.unwatch(watcher)
        costs[mode] = best
    calls.step_reporter = progress.call_step
    return costs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default="tiny,larger",
                        help="comma-separated: tiny (64x64), accel, larger (at --size)")
    args = parser.parse_args(argv)
    import os
    import tempfile

    import torch
    from diffusers import DiffusionPipeline
    from tiny_models import tiny_sd_path

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} "
          f"CPUs, load average {os.getloadavg()[0]:.1f} (shared with other work)")
    wanted = args.models.split(",")
    with tempfile.TemporaryDirectory() as folder:
        models = []
        if "tiny" in wanted:
            models.append(("tiny SD", tiny_sd_path(), 64))
        if "accel" in wanted:
            models.append(("bench_accel SD (32/64/64)", sd_path(), args.size))
        if "larger" in wanted:
            build_larger_sd(Path(folder) / "larger", (128, 256, 256))
            models.append(("larger random SD (128/256/256)", Path(folder) / "larger",
                           args.size))
        for name, path, size in models:
            pipe = DiffusionPipeline.from_pretrained(str(path))
            pipe.set_progress_bar_config(disable=True)
            model_rows(name, pipe, size, args.steps, args.rounds)
    print("\none step callback called directly, thread CPU ns, best of 5 x 100000")
    costs = callback_costs()
    for mode, ns in costs.items():
        print(f"{mode:32} {ns:8.0f} ns  ({ns - costs[MODES[0]]:+.0f} ns)")
    print("\none preview alone (linear map + PNG), wall ms, mean of 20")
    for name, shape, ms in preview_costs(20):
        print(f"{name:18} latents {shape:18} {ms:7.2f} ms")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

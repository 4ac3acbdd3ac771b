"""Per-step cost of live progress (engine/progress.py): nobody watching, a watcher, a watcher
with previews, against the step callback as it was before (the cancel check alone).

In process, one pipeline (bench_accel's SD with a 3-block UNet and the tiny VAE), the same
seed and prompt every run; the modes are interleaved round by round and each figure is the
median seconds per denoising step over ``--rounds``. The box is shared: the spread between
rounds is printed beside each median. Then the preview itself (the linear latent-to-RGB map
and the PNG) timed alone on real families' latent sizes.
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

MODES = ("before: cancel check only", "nobody watching", "watcher, no previews",
         "watcher, previews every step")


def _plan(size: int, steps: int) -> SimpleNamespace:
    spec = SimpleNamespace(options={"preview_every": 1})
    return SimpleNamespace(job=SimpleNamespace(dst="/bench/out.png"), steps=steps,
                           width=size, height=size, loaded=SimpleNamespace(spec=spec))


def run_mode(pipe, mode: str, size: int, steps: int) -> float:
    """Seconds per step of one pipeline call in ``mode``."""
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
    try:
        started = time.perf_counter()
        pipe("a red fox in the snow", num_inference_steps=steps, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(1), output_type="latent",
             callback_on_step_end=calls.cancel_callback(lambda: False))
        seconds = (time.perf_counter() - started) / steps
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
    """Milliseconds per preview for latent sizes of real families' 1024x1024 (SD: 512)."""
    import torch
    from diffusers import FluxPipeline

    from diffusers_backend.engine.previews import preview_png

    sd = type("StableDiffusionPipeline", (), {})()
    sdxl = type("StableDiffusionXLPipeline", (), {})()
    flux = FluxPipeline.__new__(FluxPipeline)
    flux.vae_scale_factor = 8
    cases = (("SD 1.5, 512x512", "(4, 64, 64)", sd, torch.randn(4, 64, 64), 512),
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(sd_path()))
    pipe.set_progress_bar_config(disable=True)
    run_mode(pipe, MODES[0], args.size, 2)  # warm-up
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            times[mode].append(run_mode(pipe, mode, args.size, args.steps))
    print(f"per-step time, {args.size}x{args.size}, {args.steps} steps, median of "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    base = statistics.median(times[MODES[0]])
    print(f"{'mode':32} {'ms/step':>9} {'min-max ms':>15} {'vs before':>10}")
    for mode in MODES:
        median = statistics.median(times[mode])
        spread = f"{min(times[mode]) * 1000:.1f}-{max(times[mode]) * 1000:.1f}"
        print(f"{mode:32} {median * 1000:9.1f} {spread:>15} {(median / base - 1) * 100:+9.1f}%")
    print("\none preview alone (linear map + PNG), mean of 20")
    for name, shape, ms in preview_costs(20):
        print(f"{name:18} latents {shape:18} {ms:7.2f} ms")


if __name__ == "__main__":
    main()

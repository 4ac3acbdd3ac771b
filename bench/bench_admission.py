"""Issue 26's figures: what the block-level cancellation checks cost on a normal request,
and how far admission's time estimate is from the time a request really takes.

    .venv/bin/python -u bench/bench_admission.py [--rounds 15] [--part overhead|estimate]

Random-weight SD pipelines: the tiny SD of the tests (32/64 channels, 64x64) and larger
ones (a 64/128/256-channel UNet at 96x96, and a 128/256/256 one at 256x256, where a step
costs what a small real model's does on a CPU; two layers per block, attention on two
levels). For each:

* overhead: the same pipeline object called with the checks active (``watching`` a probe
  that reads a threading.Event, as cheap as the gRPC context's) and inactive (no probe: the
  hook returns after one thread-local lookup), against the same object with its hooks
  taken off (the checks and the timing hooks of the denoiser and decoder).
  The box this runs on is shared and busy, so each call is measured in CPU time of the
  calling thread (``time.thread_time_ns``, torch held to one thread so all of the work is
  on it), not wall time; the variants are interleaved round by round and each gets the
  median and interquartile range over ``--rounds``, and the ratio to "no hooks" (of the
  medians, and the median of the per-round ratios). Thread CPU time still varies with
  cache and memory-bandwidth contention from the other processes, which the IQR shows;
* estimate error: before each request, ``admission.estimate`` (from the warm-up and the
  requests measured so far); then the request's pipeline time. Ratio = estimate / actual.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def build_larger_sd(path: Path, channels: tuple[int, int, int] = (64, 128, 256)) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from tiny_models import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_sd_components

    torch.manual_seed(0)
    components = tiny_sd_components()
    components["unet"] = UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=2, sample_size=32,
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32).eval()
    components["text_encoder"] = tiny_clip_text_encoder(0)
    StableDiffusionPipeline(**components, requires_safety_checker=False).save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def cpu_timed(pipe, side: int, steps: int) -> float:
    """Seconds of CPU time the calling thread spent in one pipeline call (with one torch
    thread, all of the call's work): unlike wall time, waiting for a core shared with other
    processes does not count."""
    import torch

    started = time.thread_time_ns()
    pipe(prompt="a red cube", num_inference_steps=steps, width=side, height=side,
         generator=torch.Generator().manual_seed(1))
    return (time.thread_time_ns() - started) / 1e9


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


@contextmanager
def hooks_off(pipe) -> Iterator[None]:
    """The pipeline's module hooks taken off for the body and put back after: the same
    objects, at the same addresses, with and without hooks (two copies of a pipeline differ
    by up to 5 % in CPU time on this box, more than the checks could cost)."""
    saved = []
    for part in (pipe.unet, pipe.vae.decoder):
        for module in part.modules():
            saved.append((module, dict(module._forward_pre_hooks),
                          dict(module._forward_hooks)))
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
    try:
        yield
    finally:
        for module, pre, post in saved:
            module._forward_pre_hooks.update(pre)
            module._forward_hooks.update(post)


def overhead(name: str, path: Path, side: int, steps: int, rounds: int) -> None:
    from diffusers import StableDiffusionPipeline

    from diffusers_backend.engine.block_checks import checked_blocks, install, watching

    hooked = StableDiffusionPipeline.from_pretrained(path)
    hooked.set_progress_bar_config(disable=True)
    install(hooked)
    gone = threading.Event()
    checks = len(checked_blocks(hooked.unet)) + len(checked_blocks(hooked.vae.decoder))
    variants = ("no hooks", "hooks, no probe", "hooks, probe active")
    times: dict[str, list[float]] = {label: [] for label in variants}
    cpu_timed(hooked, side, 1)  # warm up
    for round_ in range(rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]  # A B C, C B A, ...
        for label in order:
            if label == "no hooks":
                with hooks_off(hooked):
                    times[label].append(cpu_timed(hooked, side, steps))
            elif label == "hooks, no probe":
                times[label].append(cpu_timed(hooked, side, steps))
            else:
                with watching(gone.is_set):
                    times[label].append(cpu_timed(hooked, side, steps))
    base = times["no hooks"]
    check = per_check_cost()
    per_call = check * checks * steps
    print(f"\n{name}: {side}x{side}, {steps} steps, {checks} checked blocks per denoiser "
          f"call + decode; CPU time of the calling thread per request (one pipeline object, "
          f"its hooks taken off for 'no hooks'), {rounds} interleaved rounds")
    print(f"  {'variant':22s} {'median ms':>10s} {'IQR ms':>17s} {'vs no hooks':>12s} "
          f"{'per-round ratio, median [IQR]':>31s}")
    for label, values in times.items():
        q1, median, q3 = quartiles(values)
        r1, ratio, r3 = quartiles([v / b for v, b in zip(values, base, strict=True)])
        print(f"  {label:22s} {median * 1000:10.1f} {q1 * 1000:8.1f}-{q3 * 1000:<8.1f} "
              f"{100 * (median / statistics.median(base) - 1):+11.2f}% "
              f"{100 * (ratio - 1):+13.2f}% [{100 * (r1 - 1):+.2f}, {100 * (r3 - 1):+.2f}]")
    print(f"  direct: one hooked module call costs {check * 1e9:.0f} ns more than a bare one "
          f"(probe active); x {checks} checks x {steps} steps = {per_call * 1e6:.0f} us = "
          f"{100 * per_call / statistics.median(base):.4f} % of the median unhooked request")


def per_check_cost(calls: int = 100_000) -> float:
    """Seconds one block check adds to a module call with a probe active: an ``nn.Identity``
    called with and without the hook (so torch's slower call path for hooked modules counts
    too), thread CPU time, best of 5 each: a figure the busy CPU disturbs far less than
    whole pipeline calls."""
    import torch

    from diffusers_backend.engine import block_checks

    gone = threading.Event()
    bare, hooked = torch.nn.Identity(), torch.nn.Identity()
    hooked.register_forward_pre_hook(block_checks._check)
    x = torch.zeros(1)
    best = {id(bare): float("inf"), id(hooked): float("inf")}
    with block_checks.watching(gone.is_set):
        for _ in range(5):
            for module in (bare, hooked):
                started = time.thread_time_ns()
                for _ in range(calls):
                    module(x)
                seconds = (time.thread_time_ns() - started) / 1e9 / calls
                best[id(module)] = min(best[id(module)], seconds)
    return best[id(hooked)] - best[id(bare)]


def estimate_error(name: str, path: Path, sizes: list[tuple[int, int]]) -> None:
    from diffusers_backend.engine import admission
    from diffusers_backend.engine.runtime import ModelRuntime
    from diffusers_backend.loading.spec import LoadSpec
    from diffusers_backend.settings import Settings
    from diffusers_backend.tasks.jobs import ImageJob

    runtime = ModelRuntime(Settings(idle_release_s=0, max_side_factor=64))
    loaded = runtime.load(LoadSpec(model=str(path)))
    print(f"\n{name}: estimate before each request vs its pipeline time "
          "(first row: from the warm-up only)")
    print(f"  {'size':>9s} {'steps':>5s} {'estimate s':>10s} {'actual s':>9s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as out:
        for side, steps in sizes:
            guess = admission.estimate(loaded, side, side, steps)
            started = time.perf_counter()
            runtime.generate_image(ImageJob(prompt="a red cube", width=side, height=side,
                                            steps=steps, seed=1, dst=f"{out}/x.png"),
                                   lambda: False)
            actual = time.perf_counter() - started
            seconds = guess.seconds if guess and guess.seconds is not None else float("nan")
            print(f"  {side:>4d}x{side:<4d} {steps:>5d} {seconds:>10.3f} {actual:>9.3f} "
                  f"{seconds / actual:>6.2f}")
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--part", choices=("all", "overhead", "estimate"), default="all")
    parser.add_argument("--big-steps", type=int, default=1,
                        help="steps of the 128/256/256 model's 256x256 request")
    args = parser.parse_args()
    import os

    import torch
    from tiny_models import tiny_sd_path

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(shared with other work)")
    tiny = tiny_sd_path()
    with tempfile.TemporaryDirectory() as folder:
        larger = Path(folder) / "larger-sd"
        build_larger_sd(larger)
        if args.part in ("all", "overhead"):
            big = Path(folder) / "big-sd"
            build_larger_sd(big, (128, 256, 256))
            overhead("tiny SD", tiny, 64, 4, args.rounds)
            overhead("larger random SD (64/128/256)", larger, 96, 2, args.rounds)
            overhead("larger random SD (128/256/256)", big, 256, args.big_steps, args.rounds)
        if args.part in ("all", "estimate"):
            estimate_error("tiny SD", tiny, [(64, 4), (128, 2), (192, 1), (256, 1)])
            estimate_error("larger random SD", larger, [(64, 2), (96, 1), (128, 1)])
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Issue 26's figures: what the block-level cancellation checks cost on a normal request,
and how far admission's time estimate is from the time a request really takes.

    .venv/bin/python -u bench/bench_admission.py [--runs 7]

Two random-weight SD pipelines, loaded by the server's runtime: the tiny SD of the tests
(32/64 channels) and a larger one (a 64/128/256-channel UNet, two layers per block,
attention on two levels). For each:

* overhead: the same pipeline object called with the checks active (``watching`` a probe
  that reads a threading.Event, as cheap as the gRPC context's) and inactive (no probe: the
  hook returns after one thread-local lookup), against a copy loaded without hooks at all;
  interleaved runs, median of ``--runs``;
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def build_larger_sd(path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from tiny_models import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_sd_components

    torch.manual_seed(0)
    components = tiny_sd_components()
    components["unet"] = UNet2DConditionModel(
        block_out_channels=(64, 128, 256), layers_per_block=2, sample_size=32,
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32).eval()
    components["text_encoder"] = tiny_clip_text_encoder(0)
    StableDiffusionPipeline(**components, requires_safety_checker=False).save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def timed(pipe, side: int, steps: int) -> float:
    started = time.perf_counter()
    pipe(prompt="a red cube", num_inference_steps=steps, width=side, height=side,
         generator=__import__("torch").Generator().manual_seed(1))
    return time.perf_counter() - started


def overhead(name: str, path: Path, side: int, steps: int, runs: int) -> None:
    from diffusers import StableDiffusionPipeline

    from diffusers_backend.engine.block_checks import checked_blocks, install, watching

    plain = StableDiffusionPipeline.from_pretrained(path)
    hooked = StableDiffusionPipeline.from_pretrained(path)
    for pipe in (plain, hooked):
        pipe.set_progress_bar_config(disable=True)
    install(hooked)
    gone = threading.Event()
    checks = len(checked_blocks(hooked.unet)) + len(checked_blocks(hooked.vae.decoder))
    times: dict[str, list[float]] = {"no hooks": [], "hooks, no probe": [],
                                     "hooks, probe active": []}
    timed(plain, side, 1), timed(hooked, side, 1)  # warm both
    for _ in range(runs):
        times["no hooks"].append(timed(plain, side, steps))
        times["hooks, no probe"].append(timed(hooked, side, steps))
        with watching(gone.is_set):
            times["hooks, probe active"].append(timed(hooked, side, steps))
    base = statistics.median(times["no hooks"])
    check = per_check_cost()
    per_call = check * checks * steps
    print(f"\n{name}: one check {check * 1e9:.0f} ns; {checks} checks x {steps} steps = "
          f"{per_call * 1e6:.0f} us per request = {100 * per_call / min(times['no hooks']):.4f} %"
          f" of its fastest unhooked run ({min(times['no hooks']) * 1000:.0f} ms)")
    print(f"\n{name}: {side}x{side}, {steps} steps, {checks} checked blocks per denoiser "
          f"call + decode, median of {runs}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:22s} {median * 1000:9.1f} ms  {100 * (median / base - 1):+6.2f} %"
              f"   (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})")


def per_check_cost(calls: int = 200_000) -> float:
    """Seconds one block check costs with a probe active (the hook itself, called directly):
    a figure the busy CPU disturbs far less than whole pipeline calls."""
    from diffusers_backend.engine import block_checks

    gone = threading.Event()
    best = float("inf")
    for _ in range(5):
        with block_checks.watching(gone.is_set):
            started = time.perf_counter()
            for _ in range(calls):
                block_checks._check(None, None)
            best = min(best, (time.perf_counter() - started) / calls)
    return best


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
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    import os

    import torch
    from tiny_models import tiny_sd_path

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs (shared with other work: figures are noisy)")
    tiny = tiny_sd_path()
    with tempfile.TemporaryDirectory() as folder:
        larger = Path(folder) / "larger-sd"
        build_larger_sd(larger)
        overhead("tiny SD", tiny, 64, 4, args.runs)
        overhead("larger random SD", larger, 96, 2, args.runs)
        estimate_error("tiny SD", tiny, [(64, 4), (128, 2), (192, 1), (256, 1)])
        estimate_error("larger random SD", larger, [(64, 2), (96, 1), (128, 1)])


if __name__ == "__main__":
    main()

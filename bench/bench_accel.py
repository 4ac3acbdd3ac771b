"""Acceleration options, each against the option off in the same run, on CPU-sized models
where the denoiser dominates (docs/acceleration.md has the figures and the GPU rows).

For each option: LoadModel time (the backend's own ``load_pipeline``), generation time off
and on as interleaved pairs (the machine's load drifts; the ratio of medians is reported),
and how far the output moves: mean absolute pixel difference (0-255) and PSNR against the
option-off image of the same seed.

  - caches on a random-weight Flux transformer (4 double + 8 single blocks, 4 heads x 32)
    at 256x256, 20 steps: ``taylorseer``, ``faster``, ``pab``, ``first_block``
  - ``deepcache`` and ``quantize:int8wo`` on an SD-style UNet (32/64/64 channels, two
    layers per block, attention in two blocks) at 128x128, 20 steps
  - the compile cache: ``compile_regional:true`` loaded by two fresh processes in turn on
    one ``DIFFUSERS_COMPILE_CACHE_DIR`` (first: empty cache; second: the same model again)

Random weights change a lot from step to step, so threshold caches (``first_block``) may
never reuse here: a 1.0x row with an infinite PSNR says exactly that.

Run:
  .venv/bin/python bench/bench_accel.py                     # everything (minutes on 2 cores)
  .venv/bin/python bench/bench_accel.py --part caches       # or unet, compile
  .venv/bin/python bench/bench_accel.py --steps 12 --rounds 1   # quicker, noisier
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from tiny_models import (  # noqa: E402
    cached_build,
    save_pipeline,
    sd_ddim_scheduler,
    tiny_clip_text_encoder,
    tiny_clip_tokenizer,
    tiny_t5_encoder,
    tiny_vae,
)

FLUX_CACHES = (("taylorseer", {}), ("faster", {}), ("pab", {}), ("first_block", {}))
PROMPT = "a red fox in the snow, detailed photograph"


def _build_flux(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=4, num_single_layers=8, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(8, 12, 12)).eval()
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=tiny_clip_text_encoder(0), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(0), tokenizer_2=tiny_clip_tokenizer(),
        transformer=transformer)
    save_pipeline(pipe, path, "tokenizer", "tokenizer_2")


def _build_sd(path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=64, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32, attention_head_dim=8).eval()
    pipe = StableDiffusionPipeline(
        unet=unet, scheduler=sd_ddim_scheduler(), vae=tiny_vae(0),
        text_encoder=tiny_clip_text_encoder(0), tokenizer=tiny_clip_tokenizer(),
        safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False)
    save_pipeline(pipe, path, "tokenizer")


def flux_path() -> Path:
    return cached_build("bench-accel-flux-v2", _build_flux)


def sd_path() -> Path:
    return cached_build("bench-accel-sd", _build_sd)


def load(path: Path, options: dict[str, Any], cuda: bool = False,
         dtype: str = "") -> tuple[Any, float]:
    """The backend's LoadModel work in-process (on CUDA in float16 when ``cuda``): the
    pipeline and the seconds it took."""
    from diffusers_backend.loading.pipeline_loader import load_pipeline
    from diffusers_backend.loading.spec import LoadSpec
    from diffusers_backend.settings import load_settings

    started = time.perf_counter()
    spec = LoadSpec(model=str(path), options=options, cuda=cuda, f16=cuda, dtype=dtype)
    loaded = load_pipeline(spec, load_settings())
    if cuda:
        import torch

        torch.cuda.synchronize()
    return loaded.pipe, time.perf_counter() - started


def generate(pipe: Any, size: int, steps: int) -> tuple[float, np.ndarray]:
    import torch

    started = time.perf_counter()
    image = pipe(prompt=PROMPT, num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator("cpu").manual_seed(1)).images[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, np.asarray(image, dtype=np.float64)


def deviation(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean absolute pixel difference (0-255) and PSNR in dB (inf: identical)."""
    diff = reference - other
    mse = float((diff ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    return float(np.abs(diff).mean()), psnr


def compare(name: str, off: Any, on: Any, size: int, steps: int, rounds: int,
            load_s: tuple[float, float]) -> list[str]:
    """Interleaved off/on generations; one table row."""
    generate(off, size, 2)  # first calls pay one-off costs (allocations, thread pools)
    generate(on, size, 2)
    times_off, times_on = [], []
    image_off = image_on = None
    for _ in range(rounds):
        seconds, image_off = generate(off, size, steps)
        times_off.append(seconds)
        seconds, image_on = generate(on, size, steps)
        times_on.append(seconds)
    assert image_off is not None and image_on is not None
    mad, psnr = deviation(image_off, image_on)
    t_off, t_on = statistics.median(times_off), statistics.median(times_on)
    return [name, f"{load_s[0]:.1f} / {load_s[1]:.1f}", f"{t_off:.2f}", f"{t_on:.2f}",
            f"{t_off / t_on:.2f}x", f"{mad:.2f}", "inf" if math.isinf(psnr) else f"{psnr:.1f}"]


def measure_pipeline(path: Path, options_on: Sequence[tuple[str, dict[str, Any]]], size: int,
                     steps: int, rounds: int, cuda: bool = False,
                     dtype: str = "") -> list[list[str]]:
    """Each option against the plain pipeline; a refused option prints its reason."""
    from diffusers_backend.errors import LoadError

    off, load_off = load(path, {}, cuda, dtype)
    rows = []
    for name, options in options_on:
        try:
            on, load_on = load(path, options, cuda, dtype)
        except LoadError as exc:
            print(f"| {name} | refused: {exc} |", flush=True)
            continue
        rows.append(compare(name, off, on, size, steps, rounds, (load_off, load_on)))
        print_table([rows[-1]], header=False)
        del on
    return rows


def measure_compile(path: Path, size: int = 64, cuda: bool = False,
                    dtype: str = "") -> list[str]:
    """LoadModel with compile_regional in two fresh processes on one new compile cache."""
    code = ("import sys, time; sys.path[:0] = [sys.argv[1]]; "
            "from bench.bench_accel import load; from pathlib import Path; "
            f"print(round(load(Path(sys.argv[2]), {{'compile_regional': True, 'width': {size}, "
            f"'height': {size}}}, {cuda}, {dtype!r})[1], 2))")
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as cache:
        env = {**os.environ, "DIFFUSERS_COMPILE_CACHE_DIR": cache}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        times = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", code, str(REPO), str(path)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            times.append(float(out.strip().splitlines()[-1]))
    return ["compile cache: compile_regional, 1st / 2nd start", f"{times[0]:.1f} / {times[1]:.1f}",
            "", "", f"{times[0] / times[1]:.2f}x load", "", ""]


HEADER = ["option (off vs on)", "LoadModel s off / on", "gen s off", "gen s on", "speed",
          "mean abs diff", "PSNR dB"]


def print_table(rows: Sequence[Sequence[str]], header: bool = True) -> None:
    if header:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "caches", "unet", "compile"), default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs per option")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="only the Flux caches of this name (e.g. taylorseer)")
    args = parser.parse_args(argv)
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()
    print(f"# bench_accel: torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{args.threads} threads, {args.steps} steps, {args.rounds} pairs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print_table([])
    parts: dict[str, Callable[[], object]] = {
        "caches": lambda: measure_pipeline(
            flux_path(), [(f"cache:{n} (Flux 4+8 blocks, 256 px)", {"cache": n, **extra})
                          for n, extra in FLUX_CACHES if args.only in (None, n)],
            256, args.steps, args.rounds),
        "unet": lambda: measure_pipeline(
            sd_path(), [("cache:deepcache (SD UNet, 128 px)", {"cache": "deepcache"}),
                        ("quantize:int8wo (SD UNet, 128 px)", {"quantize": "int8wo"})],
            128, args.steps, args.rounds),
        "compile": lambda: print_table([measure_compile(sd_path())], header=False),
    }
    for name, run in parts.items():
        if args.part in ("all", name):
            run()


if __name__ == "__main__":
    main()

"""TensorParallelSize: one process against N context-parallel workers (diffusers' Ulysses
attention on torch.distributed), loaded through the backend's own LoadModel code
(``engine/parallel/loader.py``) and called as the engine calls the pipeline.

For each world size: LoadModel time, seconds per image and denoising steps per second over
interleaved repeats (median), and how far the picture moves from one process's (mean absolute
pixel difference 0-255, same seed). Rows:

  - CPU (gloo): the tests' tiny Flux at 64x64 and bench_accel.py's random Flux (4 double +
    8 single blocks, 4 heads x 32) at 256x256. On a 2-core box shared with other work, two
    processes cannot be faster than one: these are the correctness rows, and the cost of the
    extra process and its collectives.
  - CUDA (NCCL), from bench_gpu.py ``--part parallel``: a Flux.1-dev-size transformer at
    1024x1024 over 1, 2, 4 and 8 GPUs (as many as are visible), steps per second against one.

Run:
  .venv/bin/python bench/bench_context_parallel.py                 # CPU rows (a few minutes)
  .venv/bin/python bench/bench_context_parallel.py --model tiny --repeats 3
  python bench/bench_gpu.py --arch flux --part parallel             # the GPU rows
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

PROMPT = "a red fox in the snow, detailed photograph"
HEADER = ["model", "processes x torch threads", "LoadModel s", "s / image", "steps / s",
          "vs the first row", "mean abs diff"]


def load(path: Path, world: int, cuda: bool, dtype: str, threads: int = 0
         ) -> tuple[Any, float]:
    """The backend's LoadModel path with TensorParallelSize = world (1: one process)."""
    from diffusers_backend.engine.parallel.loader import load_model
    from diffusers_backend.loading.spec import LoadSpec
    from diffusers_backend.settings import load_settings

    options: dict[str, Any] = {"torch_dtype": dtype} if dtype else {}
    spec = LoadSpec(model=str(path), cuda=cuda, tensor_parallel_size=world, options=options,
                    threads=threads)
    started = time.perf_counter()
    loaded = load_model(spec, load_settings())
    return loaded, time.perf_counter() - started


def generate(pipe: Any, size: int, steps: int, seed: int = 3,
             threads: int = 0) -> tuple[float, np.ndarray]:
    import torch

    if threads:  # this process's pipeline; workers keep the count they were loaded with
        torch.set_num_threads(threads)
    started = time.perf_counter()
    image = pipe(prompt=PROMPT, num_inference_steps=steps, width=size, height=size,
                 max_sequence_length=64, guidance_scale=3.5,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return time.perf_counter() - started, np.asarray(image.convert("RGB"), dtype=np.float64)


def measure(name: str, path: Path, runs: Sequence[tuple[int, int]], size: int, steps: int,
            repeats: int, cuda: bool = False, dtype: str = "") -> list[list[str]]:
    """One row per (processes, torch threads each; 0 = torch's default); every model is loaded
    once and the timed calls interleaved; the first run is the reference."""
    from diffusers_backend.engine.parallel.loader import stop_workers

    loaded = {}
    for world, threads in runs:
        loaded[world, threads] = load(path, world, cuda, dtype, threads)
        generate(loaded[world, threads][0].pipe, size, steps, threads=threads)  # warm-up
    seconds: dict[tuple[int, int], list[float]] = {run: [] for run in runs}
    pictures: dict[tuple[int, int], np.ndarray] = {}
    for _ in range(repeats):
        for run in runs:
            took, pictures[run] = generate(loaded[run][0].pipe, size, steps, threads=run[1])
            seconds[run].append(took)
    base = statistics.median(seconds[runs[0]])
    rows = []
    for run in runs:
        median = statistics.median(seconds[run])
        diff = float(np.abs(pictures[run] - pictures[runs[0]]).mean())
        label = f"{run[0]} x {run[1] or 'default'}"
        rows.append([name, label, f"{loaded[run][1]:.1f}", f"{median:.3f}",
                     f"{steps / median:.2f}", f"{base / median:.2f}x", f"{diff:.3f}"])
        print_table([rows[-1]], header=False)
        stop_workers(loaded[run][0])
    return rows


def print_table(rows: Sequence[Sequence[str]], header: bool = True) -> None:
    if header:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "small", "both"), default="both")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import torch
    from bench_accel import flux_path
    from tiny_image_models import tiny_flux_path

    cores = len(os.sched_getaffinity(0))
    print(f"bench_context_parallel.py  cpu ({cores} cores, shared), torch "
          f"{torch.__version__}; {args.steps} steps, median of {args.repeats} interleaved")
    print_table([])
    # One process with one thread, with every core, and N processes of one thread each:
    # on a busy shared box, spinning torch threads can cost more than they give.
    runs = ((1, 1), (1, cores), (2, max(1, cores // 2)))
    if args.model in ("tiny", "both"):
        measure("tiny Flux 64x64", tiny_flux_path(), runs, 64, args.steps, args.repeats)
    if args.model in ("small", "both"):
        measure("random Flux 4+8 blocks 256x256", flux_path(), runs, 256, args.steps,
                args.repeats)


if __name__ == "__main__":
    main()

"""Serving benchmark: start-up, load, per-request overhead and concurrency, in one run.

Measures, against a tiny random-weight Stable Diffusion pipeline built on the spot:
  - process start until Health answers OK (fresh process each time)
  - LoadModel of the tiny pipeline
  - GenerateImage 64x64, 2 steps, served end to end, side by side with the same call made
    on a bare in-process diffusers pipeline (the overhead we add)
  - 16 concurrent GenerateImage 64x64, 4 steps, with PYTHON_GRPC_MAX_WORKERS=4

Run: .venv/bin/python bench/bench_server.py   (about a minute on 2 cores)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import backend_pb2, start_backend  # noqa: E402
from tiny_models import tiny_sd_path  # noqa: E402

RUNS = 21


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_start(tmp: Path) -> list[float]:
    times = []
    for _ in range(5):
        started = time.monotonic()
        server = start_backend(tmp)
        times.append(time.monotonic() - started)
        server.stop()
    return times


def bare_pipeline(model: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_call(pipe, seed: int, steps: int, dst: Path) -> float:
    """The same work a served request does, minus the server: generate and save a PNG."""
    import torch

    started = time.perf_counter()
    image = pipe("a red cube", height=64, width=64, num_inference_steps=steps,
                 guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    image.save(dst)
    return time.perf_counter() - started


def main() -> None:
    model = tiny_sd_path()
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    start_times = bench_start(tmp)

    server = start_backend(tmp, env={"PYTHON_GRPC_MAX_WORKERS": "4"})
    try:
        assert server.load(model).success  # the first load also waits for torch to import
        started = time.monotonic()
        result = server.load(model)
        load_s = time.monotonic() - started
        assert result.success, result.message
        pipe = bare_pipeline(model)
        served, bare = [], []
        for i in range(RUNS + 1):  # interleaved, so drift in machine load hits both alike
            started = time.perf_counter()
            server.image(tmp / "served.png", seed=i + 1, step=2)
            served.append(time.perf_counter() - started)
            bare.append(bare_call(pipe, i + 1, 2, tmp / "bare.png"))
        served, bare = served[1:], bare[1:]  # the first call of each warms caches

        def one(i: int) -> None:
            server.image(tmp / f"c{i}.png", seed=i + 1, step=4)

        server.image(tmp / "warm.png", step=4)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(16)))
        concurrent_s = time.monotonic() - started
        health = []
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(16)]
            time.sleep(0.2)
            for _ in range(5):
                t0 = time.perf_counter()
                server.stub.Health(backend_pb2.HealthMessage(), timeout=10)
                health.append(time.perf_counter() - t0)
            for f in futures:
                f.result()
    finally:
        server.stop()

    overhead = (statistics.median(served) / statistics.median(bare) - 1) * 100
    rows = [
        ("start until Health OK (median of 5)", f"{median_ms(start_times):.0f} ms", "5.6 s"),
        ("LoadModel, tiny SD (imports done)", f"{load_s * 1000:.0f} ms", "0.83 s"),
        ("GenerateImage 64x64 2 steps, served", f"{median_ms(served):.1f} ms", "95 ms"),
        ("same call, bare diffusers in-process", f"{median_ms(bare):.1f} ms", "~70 ms"),
        ("per-request overhead vs bare", f"{overhead:+.1f} %", "+36 %"),
        ("16 concurrent, 4 steps, 4 workers (wall)", f"{concurrent_s:.2f} s", "1.9 s"),
        ("Health while 16 generations queued (max)", f"{max(health) * 1000:.1f} ms", "n/a"),
    ]
    print(f"{'measurement':44} {'this backend':>14} {'anchor (doc)':>14}")
    for name, ours, anchor in rows:
        print(f"{name:44} {ours:>14} {anchor:>14}")
    print("\nanchor column: LocalAI's own diffusers backend, measured on this kind of machine "
          "(figures in bench/README.md)")


if __name__ == "__main__":
    main()

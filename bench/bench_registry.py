"""Benchmark: listing diffusers pipelines/tasks in a fresh process, three ways, side by side.

* ``warm cache``  - diffusers_dynamic_loader with its disk cache present (no torch/diffusers
  import at all);
* ``cold (no cache)`` - the same with the cache deleted before each run (imports diffusers'
  lazy top level, reads the pipelines' sources, writes the cache);
* ``full scan`` - what the old loader did: import every top-level diffusers name and keep the
  ``DiffusionPipeline`` subclasses.

Each mode runs in its own subprocess (median of ``--runs``), reporting wall seconds and the
child's peak RSS. Run: ``.venv/bin/python bench/bench_registry.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_REPORT = """
import json, resource, sys
print("BENCH" + json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                            "pipelines": N_PIPES, "tasks": N_TASKS,
                            "torch_imported": "torch" in sys.modules}))
"""

LISTING = (
    """
import diffusers_dynamic_loader as dl
N_PIPES = len(dl.get_available_pipelines())
N_TASKS = len(dl.get_available_tasks())
"""
    + _REPORT
)

FULL_SCAN = (
    """
import warnings
warnings.filterwarnings("ignore")
import diffusers
from diffusers import DiffusionPipeline
found = {}
for name in dir(diffusers):
    try:
        obj = getattr(diffusers, name)
    except Exception:
        continue
    if isinstance(obj, type) and issubclass(obj, DiffusionPipeline):
        found[name] = obj
N_PIPES = len(found)
N_TASKS = -1
"""
    + _REPORT
)


def run_once(code: str, env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.split("BENCH", 1)[1])
    data["wall_s"] = wall
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (median reported)")
    args = parser.parse_args()

    cache_dir = Path(tempfile.mkdtemp(prefix="bench-loader-cache-"))
    env = dict(os.environ)
    env.update(
        {
            "DIFFUSERS_LOADER_CACHE_DIR": str(cache_dir),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )

    def cold() -> dict[str, float]:
        shutil.rmtree(cache_dir, ignore_errors=True)
        return run_once(LISTING, env)

    def warm() -> dict[str, float]:
        return run_once(LISTING, env)

    def full() -> dict[str, float]:
        return run_once(FULL_SCAN, env)

    try:
        cold()  # warm up the OS file cache and write the registry cache once
        results: dict[str, list[dict[str, float]]] = {"warm": [], "cold": [], "full": []}
        for _ in range(args.runs):  # interleave so drift hits every mode alike
            results["cold"].append(cold())
            results["warm"].append(warm())
            results["full"].append(full())
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    med = {
        mode: {
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "rss_mb": statistics.median(r["rss_mb"] for r in runs),
            "pipelines": runs[0]["pipelines"],
            "tasks": runs[0]["tasks"],
            "torch": runs[0]["torch_imported"],
        }
        for mode, runs in results.items()
    }
    labels = {
        "warm": "listing, warm disk cache",
        "cold": "listing, no cache (rebuild)",
        "full": "full import-and-scan (old)",
    }
    full_wall, full_rss = med["full"]["wall_s"], med["full"]["rss_mb"]
    pyver = sys.version.split()[0]
    print(f"fresh-process pipeline listing, median of {args.runs} runs, python {pyver}")
    print(
        f"{'mode':<30} {'wall s':>8} {'peak RSS MB':>12} {'pipelines':>10} {'torch?':>7} "
        f"{'speedup':>8} {'RSS ratio':>10}"
    )
    for mode in ("warm", "cold", "full"):
        m = med[mode]
        print(
            f"{labels[mode]:<30} {m['wall_s']:>8.3f} {m['rss_mb']:>12.1f} {m['pipelines']:>10} "
            f"{'yes' if m['torch'] else 'no':>7} {full_wall / m['wall_s']:>7.1f}x "
            f"{full_rss / m['rss_mb']:>9.1f}x"
        )
    print("(speedup / RSS ratio = full scan divided by the row; the registry also lists the")
    print(" AutoPipeline classes, which the full scan of DiffusionPipeline subclasses does not)")


if __name__ == "__main__":
    main()

"""LoRA per request (``<lora:NAME:WEIGHT>`` prompt tags), measured side by side in one run on
the tiny SD pipeline (the test fixture), through the backend's own runtime and image plans
on this thread (what the pipeline thread does, without gRPC):

  1. switching LoRA between consecutive requests: the tag switch (``set_adapters`` on a
     cached adapter, and back) against reloading the model with another ``LoraAdapter``
     (the backend's ``ModelRuntime.load``), alternating between two LoRAs;
  2. a stream of requests cycling three LoRAs against a stream that keeps one LoRA, both
     after the adapters are cached, blocks of the two streams interleaved so the machine's
     drifting load hits both alike: throughput, p50 and p99 per request;
  3. on a compiled denoiser (``compile:true``, ``--compile-backend``, default ``eager``:
     inductor takes minutes per compile on this CPU): the hot-swap of the tag slot against
     the adapter path of a compiled model without a slot (recompiles) and reloading the
     compiled model with another ``LoraAdapter`` (load, compile, warm-up); dynamo's new
     graphs counted over the switches and the requests served after them.

Run:
  .venv/bin/python bench/bench_lora_tags.py                 # defaults below
  .venv/bin/python bench/bench_lora_tags.py --switches 20 --requests 60 --steps 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import _build_lora, tiny_sd_path  # noqa: E402

from diffusers_backend.engine.engine import Variants  # noqa: E402
from diffusers_backend.engine.runtime import ModelRuntime  # noqa: E402
from diffusers_backend.loading.lora_cache import STATS  # noqa: E402
from diffusers_backend.loading.spec import LoadSpec  # noqa: E402
from diffusers_backend.settings import Settings  # noqa: E402
from diffusers_backend.tasks.image import ImagePlan, plan_image  # noqa: E402
from diffusers_backend.tasks.jobs import ImageJob  # noqa: E402
from diffusers_backend.tasks.lora_call import applied  # noqa: E402


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switches", type=int, default=8, help="alternations per method")
    parser.add_argument("--requests", type=int, default=24, help="requests per stream")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--compile-backend", default="eager")
    args = parser.parse_args()

    import torch

    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    names = ["style-a", "style-b", "style-c"]
    for seed, name in enumerate(names, start=1):
        _build_lora(folder, seed, f"{name}.safetensors", text_encoder=seed == 1)
    settings = Settings(idle_release_s=0)
    runtime = ModelRuntime(settings)
    sd = str(tiny_sd_path())
    print(f"tiny SD {args.size}x{args.size}, {args.steps} steps; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs (shared, busy); "
          f"load average {os.getloadavg()[0]:.1f}")

    def generate(loaded, prompt: str, seed: int = 1) -> float:
        job = ImageJob(prompt=prompt, steps=args.steps, seed=seed, width=args.size,
                       height=args.size, dst=str(folder / "out.png"))
        plan = plan_image(loaded, job, settings)
        started = time.perf_counter()
        ImagePlan.run([plan], Variants(loaded.pipe), lambda: False)
        return time.perf_counter() - started

    # -- 1. switch vs reload --------------------------------------------------------------
    tagged = runtime.load(LoadSpec(model=sd, model_path=str(folder)))
    for name in names[:2]:
        generate(tagged, f"a cube <lora:{name}:0.8>")  # read once (cache miss)
    switch_s: list[float] = []
    first_read_s: list[float] = []
    for index in range(args.switches):
        name = names[index % 2]
        plan = plan_image(tagged, ImageJob(prompt=f"a cube <lora:{name}:0.8>",
                                           dst=str(folder / "o.png")), settings)
        started = time.perf_counter()
        with applied(tagged, plan.loras, True):
            pass
        switch_s.append(time.perf_counter() - started)
    # a first read (cache miss) for comparison: the third LoRA on a fresh model each time
    reload_s: list[float] = []
    for index in range(args.switches):
        name = names[index % 2]
        started = time.perf_counter()
        reloaded = runtime.load(LoadSpec(model=sd, model_path=str(folder),
                                         lora_adapter=f"{name}.safetensors", lora_scale=0.8))
        reload_s.append(time.perf_counter() - started)
        if index < 3:
            started = time.perf_counter()
            plan = plan_image(reloaded, ImageJob(prompt=f"a cube <lora:{names[2]}:0.8>",
                                                 dst=str(folder / "o.png")), settings)
            with applied(reloaded, plan.loras, True):
                pass
            first_read_s.append(time.perf_counter() - started)
    del reloaded
    sw, rl, fr = (statistics.median(x) for x in (switch_s, reload_s, first_read_s))
    print("\n1. switching LoRA between consecutive requests (median ms; eager model)")
    print(f"   tag switch, adapter cached (set_adapters and back)   {_ms(sw)}")
    print(f"   tag, first use (file read onto the model)            {_ms(fr)}")
    print(f"   reload the model with another LoraAdapter            {_ms(rl)}")
    print(f"   reload / cached switch = {rl / sw:.0f}x; reload / first use = {rl / fr:.1f}x")

    # -- 2. three-LoRA stream vs one-LoRA stream ------------------------------------------
    tagged = runtime.load(LoadSpec(model=sd, model_path=str(folder)))
    for name in names:
        generate(tagged, f"a cube <lora:{name}:0.8>")
    streams: dict[str, list[float]] = {"one LoRA": [], "three LoRAs cycled": [],
                                       "no LoRA": []}
    block = 6
    hits_before = STATS.hits
    for start in range(0, args.requests, block):
        for label in streams:
            for index in range(start, min(start + block, args.requests)):
                if label == "one LoRA":
                    prompt = f"a cube <lora:{names[0]}:0.8>"
                elif label == "no LoRA":
                    prompt = "a cube"
                else:
                    prompt = f"a cube <lora:{names[index % 3]}:0.8>"
                streams[label].append(generate(tagged, prompt, seed=index))
        print(f"   ... {min(start + block, args.requests)}/{args.requests} requests per stream",
              flush=True)
    print(f"\n2. request streams, {args.requests} requests each, blocks of {block} interleaved "
          f"(adapters cached: {STATS.hits - hits_before} hits, {STATS.misses} misses in all)")
    print("   stream                 img/s    p50 ms    p99 ms   vs one LoRA")
    base = len(streams["one LoRA"]) / sum(streams["one LoRA"])
    for label, times in streams.items():
        rate = len(times) / sum(times)
        print(f"   {label:<20} {rate:7.2f} {_ms(statistics.median(times))} "
              f"{_ms(_pct(times, 0.99))}   {rate / base:6.1%}")
    _compiled(args, runtime, sd, folder, generate)
    runtime.close()


def _compiled(args: argparse.Namespace, runtime: ModelRuntime, sd: str, folder: Path,
              generate: Any) -> None:
    """3. switching on a compiled denoiser: hot-swap slot vs adapter path vs reload."""
    import shutil

    from torch._dynamo.utils import counters

    settings = Settings(idle_release_s=0)
    unet_only = ["style-b", "style-c"]  # style-a has text-encoder layers: a slot refuses it
    options = {"compile": True, "compile_backend": args.compile_backend,
               "width": args.size, "height": args.size}

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"])

    def switches(loaded: Any) -> tuple[float, float, int]:
        for name in unet_only:  # first use: read, and (adapter path) compiled once
            generate(loaded, f"a cube <lora:{name}:0.8>")
        before, times, served = graphs(), [], []
        for index in range(args.switches):
            name = unet_only[index % 2]
            plan = plan_image(loaded, ImageJob(prompt=f"a cube <lora:{name}:0.{index % 9 + 1}>",
                                               dst=str(folder / "o.png")), settings)
            started = time.perf_counter()
            with applied(loaded, plan.loras, True):
                times.append(time.perf_counter() - started)
            served.append(generate(loaded, f"a cube <lora:{name}:0.{index % 9 + 1}>"))
        return statistics.median(times), statistics.median(served), graphs() - before

    swapped = runtime.load(LoadSpec(model=sd, model_path=str(folder), options=options))
    hot_s, hot_req, hot_graphs = switches(swapped)
    empty = Path(tempfile.mkdtemp(prefix="bench-lora-none-"))
    plain = runtime.load(LoadSpec(model=sd, model_path=str(empty), options=options))
    for name in unet_only:  # files put there after LoadModel: no slot, the adapter path
        shutil.copy(folder / f"{name}.safetensors", empty / f"{name}.safetensors")
    path_s, path_req, path_graphs = switches(plain)
    reload_s = []
    for index in range(min(args.switches, 4)):
        started = time.perf_counter()
        runtime.load(LoadSpec(model=sd, model_path=str(folder), options=options,
                              lora_adapter=f"{unet_only[index % 2]}.safetensors",
                              lora_scale=0.8))
        reload_s.append(time.perf_counter() - started)
    rl = statistics.median(reload_s)
    print(f"\n3. compiled denoiser (compile:true, backend {args.compile_backend}); "
          f"{args.switches} switches, each followed by a request; median ms")
    print("                                          switch ms  request ms  new graphs")
    print(f"   hot-swap into the slot (weights folded) {_ms(hot_s)}  {_ms(hot_req)}  "
          f"{hot_graphs:9d}")
    print(f"   adapter path, no slot (set_adapters)    {_ms(path_s)}  {_ms(path_req)}  "
          f"{path_graphs:9d}")
    print(f"   reload the compiled model with another LoraAdapter   {_ms(rl)}")
    print(f"   reload / hot-swap = {rl / hot_s:.0f}x")


if __name__ == "__main__":
    main()

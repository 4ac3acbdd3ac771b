"""GPU serving benchmark: this backend against bare diffusers on real-architecture pipelines.

Why: bench_server.py times tiny pipelines on CPU cores, which shows our per-request overhead
but not what a GPU user gets from batching, queueing or torch.compile. Timing does not depend
on the weights, so random-weight pipelines with the exact architectures of Stable Diffusion
1.5 or SDXL give real figures offline (no Hub). Everything is measured in one run on one
machine, side by side, so the ratios are not skewed by a different box or a different day:

  - bare diffusers in-process: a single image and batches of 8 and 16, each image saved as PNG
    (peak GPU memory of each)
  - a real backend server subprocess (LoadModel with CUDA and F16Memory on a GPU): single
    images interleaved with bare ones as pairs (GPU clocks drift between minutes), and 8 and
    16 concurrent clients paired with the bare batch of the same size
  - Poisson arrivals at ~70 % of one-at-a-time capacity, once with static batching
    (DIFFUSERS_BATCH_WINDOW_MS=0) and once with the default batching window: p50/p95
    latency, throughput and the batches the server formed
  - torch.compile off / ``compile:true`` / ``compile_mode:...`` (model options): LoadModel
    time, first image and steady single-image latency
  - Health latency while 16 requests are queued; the server's Status memory breakdown after
    the bursts and after 5 s idle

Run:
  .venv/bin/python bench/bench_gpu.py             # no CUDA: tiny SD, 64x64, 4 steps (~1 min)
  python bench/bench_gpu.py --arch sd15           # CUDA: SD 1.5, 512x512, 20 steps, float16
  python bench/bench_gpu.py --arch sdxl           # CUDA: SDXL, 1024x1024, 20 steps, float16
  ... --part serving / --part compile              # the two halves, e.g. for a job time limit
  python bench/bench_gpu.py --arch sdxl --part accel   # acceleration options vs off (below)
  python bench/bench_gpu.py --arch flux --part accel   # Flux.1-dev-size transformer, caches
  python bench/bench_gpu.py --arch sd15 --part continuous  # step-level vs request-level
  python bench/bench_gpu.py --arch flux --part parallel    # TensorParallelSize 1/2/4/8 GPUs

``--part accel`` loads the model in-process through the backend's own LoadModel code with
each acceleration option and compares it with the option off, interleaved (bench_accel.py's
rows, on the GPU): UNet archs get cache:deepcache, quantize:int8wo, quantize:fp8 and
compile_regional (plus the compile cache's second start); ``flux`` (a random-weight
transformer of Flux.1-dev's size, 19 + 38 blocks, small text encoders) gets cache:taylorseer,
cache:first_block, cache:faster, cache:pab, quantize:fp8 and compile_regional.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness import BackendProcess, backend_pb2, start_backend  # noqa: E402
from tiny_models import (  # noqa: E402
    byte_level_vocab,
    cached_build,
    tiny_clip_tokenizer,
    tiny_sd_path,
)

PROMPT = "a photo of a red cube on a wooden table"
GUIDANCE = 7.0
BATCH_SIZES = (8, 16)
POISSON_REQUESTS = 32
POISSON_LOAD = 0.7  # arrival rate as a share of one-at-a-time capacity
WEIGHT_SCALE = 0.5  # random weights x0.5 keep float16 activations finite
BUILD_FORMAT = 1  # bump when a builder changes what it writes
NATIVE_SIZE = {"tiny": 64, "sd15": 512, "sdxl": 1024, "flux": 1024}
SERVER_MAX_BATCH_PIXELS = 4 * 1024 * 1024  # the server's DIFFUSERS_MAX_BATCH_PIXELS default
RPC_TIMEOUT = 1800.0  # compile with max-autotune can take minutes on the first call
_BATCH_FIELD = re.compile(r"GenerateImage OK .*?\bbatch=(\d+)")


@dataclass(frozen=True)
class Config:
    """What one benchmark run measures, resolved from the flags and the machine."""

    device: str  # "cuda" or "cpu"
    dtype_name: str  # "float16" on CUDA, "float32" on CPU
    arch: str  # tiny, sd15 or sdxl
    px: int  # image width = height
    steps: int
    repeats: int  # interleaved single-image pairs; also steady runs per compile variant
    rounds: int  # Poisson runs per batching mode, alternating static and dynamic
    serving: bool  # measure bare vs served, bursts, Poisson, Health, memory
    compile_variants: tuple[tuple[str, tuple[str, ...]], ...]  # (label, model options)
    compile_skip_reason: str
    out: Path
    threads: int  # torch CPU threads of this process and of the servers; 0 = torch's default
    part: str = "all"  # all, serving, compile or accel

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def batch_pairs(self) -> int:
        return max(2, self.repeats // 3)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Flags with machine-dependent defaults: a GPU runs SD 1.5 at full size, a CPU tiny SD."""
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(NATIVE_SIZE),
                        help="pipeline architecture (default: sd15 with CUDA, tiny without)")
    parser.add_argument("--size", help="small (64 px), full (the architecture's native size) "
                        "or a pixel count, a multiple of 64 (default: full with CUDA, else small)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 20 full, 4 small)")
    parser.add_argument("--repeats", type=int,
                        help="interleaved bare/served single-image pairs (default: 9 CUDA, 5 CPU)")
    parser.add_argument("--rounds", type=int,
                        help="Poisson runs per batching mode, alternating (default: 1)")
    parser.add_argument("--part", choices=("all", "serving", "compile", "accel", "continuous",
                                           "parallel"),
                        default="all",
                        help="serving: everything but compile; compile: only the compile "
                        "comparison (e.g. to stay under a 10-minute job limit)")
    parser.add_argument("--compile", action="store_true",
                        help="run the compile comparison without CUDA too (minutes on a CPU)")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                        help="torch.compile mode of the third variant; 'none' skips it")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: a temp folder)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads, bare and served alike (default: 1 without CUDA, "
                        "since spinning threads on a busy shared box slow every call many times; "
                        "torch's own default with CUDA)")
    args = parser.parse_args(argv)

    arch = args.arch or ("sd15" if cuda else "tiny")
    size = args.size or ("full" if cuda else "small")
    if size == "small":
        px = 64
    elif size == "full":
        px = NATIVE_SIZE[arch]
    elif size.isdigit() and int(size) > 0 and int(size) % 64 == 0:
        px = int(size)
    else:
        parser.error(f"--size must be small, full or a multiple of 64, got {size!r}")
    steps = args.steps or (4 if px <= 64 else 20)
    repeats = args.repeats or (9 if cuda else 5)
    if args.part == "serving":
        variants, skip = (), "skipped (--part serving)"
    elif not cuda and not args.compile and args.part != "compile":
        variants, skip = (), "skipped on CPU (pass --compile to run it anyway)"
    else:
        variants = [("off", ()), ("compile:true", ("compile:true",))]
        if args.compile_mode.lower() != "none":
            variants.append((f"compile_mode:{args.compile_mode}",
                             ("compile:true", f"compile_mode:{args.compile_mode}")))
        variants, skip = tuple(variants), ""
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    dtype_name = ("bfloat16" if arch == "flux" else "float16") if cuda else "float32"
    return Config(device="cuda" if cuda else "cpu", dtype_name=dtype_name, part=args.part,
                  arch=arch, px=px, steps=steps, repeats=repeats,
                  rounds=args.rounds or 1, serving=args.part != "compile",
                  compile_variants=variants, compile_skip_reason=skip, out=out,
                  threads=args.threads if args.threads is not None else (0 if cuda else 1))


# --------------------------------------------------------------------------------------
# Random-weight pipelines of real architectures
# --------------------------------------------------------------------------------------

def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, act: str,
               projection: bool) -> Any:
    """A CLIP text encoder of real size whose special tokens match the byte tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    n_vocab = len(byte_level_vocab())
    config = CLIPTextConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, hidden_act=act, projection_dim=hidden,
        max_position_embeddings=77, vocab_size=49408,  # CLIP's real embedding table
        bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _sd_vae(scaling_factor: float, sample_size: int) -> Any:
    """The KL autoencoder of SD 1.x and SDXL: 4 blocks (8x downscale), 2 layers each."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=32, sample_size=sample_size, scaling_factor=scaling_factor,
    )


def _finish(modules: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Scale random weights down (float16 overflows otherwise), cast, switch to eval mode."""
    import torch

    with torch.no_grad():
        for module in modules.values():
            for param in module.parameters():
                param.mul_(WEIGHT_SCALE)
    return {name: module.to(dtype).eval() for name, module in modules.items()}


def _build_sd15(path: Path, device: str, dtype_name: str) -> None:
    """Stable Diffusion 1.5's architecture: UNet defaults + 768-d cross-attention."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8,
                                         sample_size=64),
            "vae": _sd_vae(0.18215, 512),
            "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", projection=False),
        }
    modules = _finish(modules, getattr(torch, dtype_name))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(**modules, tokenizer=tiny_clip_tokenizer(),
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def _build_sdxl(path: Path, device: str, dtype_name: str) -> None:
    """SDXL base's architecture: 3-level UNet with 1/2/10 transformer layers, two CLIPs."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel(
                sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            ),
            "vae": _sd_vae(0.13025, 1024),
            "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", projection=False),
            "text_encoder_2": _clip_text(1280, 32, 20, 5120, "gelu", projection=True),
        }
    modules = _finish(modules, getattr(torch, dtype_name))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(**modules, tokenizer=tiny_clip_tokenizer(),
                                     tokenizer_2=tiny_clip_tokenizer(), scheduler=scheduler)
    pipe.save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")
    tiny_clip_tokenizer(save_to=path / "tokenizer_2")


def _build_flux(path: Path, device: str, dtype_name: str) -> None:
    """Flux.1-dev's transformer and VAE sizes; small CLIP/T5 encoders of the right widths
    (the text encoders run once per image, the transformer at every step)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    with torch.device(device):
        modules = {
            "transformer": FluxTransformer2DModel(guidance_embeds=True),
            "vae": AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                block_out_channels=[128, 256, 512, 512], use_quant_conv=False,
                use_post_quant_conv=False, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, shift_factor=0.1159,
                scaling_factor=0.3611),
            "text_encoder": _clip_text(768, 2, 12, 3072, "quick_gelu", projection=False),
            "text_encoder_2": T5EncoderModel(T5Config(
                vocab_size=len(byte_level_vocab()), d_model=4096, d_kv=64, d_ff=10240,
                num_layers=1, num_heads=64, feed_forward_proj="gated-gelu")),
        }
    modules = _finish(modules, getattr(torch, dtype_name))
    pipe = FluxPipeline(**modules, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                        tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer())
    pipe.save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")
    tiny_clip_tokenizer(save_to=path / "tokenizer_2")


def model_path(cfg: Config) -> Path:
    """The saved pipeline folder, built once per architecture, dtype and library versions
    (under .test-fixtures/, or TINY_FIXTURE_DIR) and reused by later runs."""
    if cfg.arch == "tiny":
        return tiny_sd_path()
    builder = {"sd15": _build_sd15, "sdxl": _build_sdxl, "flux": _build_flux}[cfg.arch]
    name = f"bench-{cfg.arch}-{cfg.dtype_name}-v{BUILD_FORMAT}"
    return cached_build(name, partial(builder, device=cfg.device, dtype_name=cfg.dtype_name))


# --------------------------------------------------------------------------------------
# Bare diffusers and served calls
# --------------------------------------------------------------------------------------

class Bare:
    """The same pipeline folder loaded in this process, called as a diffusers user would."""

    def __init__(self, path: Path, cfg: Config) -> None:
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # the loading bars would bury the table
        transformers_logging.disable_progress_bar()
        self.cfg = cfg
        with warnings.catch_warnings():  # newer diffusers prefer dtype=; older lack it
            warnings.simplefilter("ignore", FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(path,
                                                     torch_dtype=getattr(torch, cfg.dtype_name))
        self.pipe = pipe.to(cfg.device)
        self.pipe.set_progress_bar_config(disable=True)

    def _call(self, n: int, seed: int, **extra: Any) -> Any:
        import torch

        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
        return self.pipe(prompt=[PROMPT] * n, height=self.cfg.px, width=self.cfg.px,
                         num_inference_steps=self.cfg.steps, guidance_scale=GUIDANCE,
                         generator=generators if n > 1 else generators[0], **extra).images

    def run(self, n: int, seed: int) -> float:
        """Seconds to make ``n`` images in one call and save each as a PNG."""
        started = time.perf_counter()
        images = self._call(n, seed)
        for i, image in enumerate(images):
            image.save(self.cfg.out / (f"bare-{n}-{i}.png" if n > 1 else "bare-single.png"))
        return time.perf_counter() - started

    def outputs_finite(self) -> bool:
        """Random float16 weights can overflow; NaN images would still time, but say so."""
        import numpy as np

        return bool(np.isfinite(self._call(1, 1, output_type="np")).all())


def served_image(server: BackendProcess, dst: Path, seed: int, cfg: Config) -> float:
    """Seconds for one GenerateImage over gRPC (the server writes the PNG)."""
    request = backend_pb2.GenerateImageRequest(
        positive_prompt=PROMPT, width=cfg.px, height=cfg.px, step=cfg.steps, seed=seed,
        dst=str(dst))
    started = time.perf_counter()
    server.stub.GenerateImage(request, timeout=RPC_TIMEOUT)
    return time.perf_counter() - started


def load(server: BackendProcess, path: Path, cfg: Config,
         options: Sequence[str] = ()) -> tuple[float, str]:
    """LoadModel as a GPU model YAML sends it (cuda: true, f16: true); seconds and reply.

    Raises on failure, with the end of the server log (the reason is there)."""
    request = backend_pb2.ModelOptions(Model=str(path), CUDA=cfg.cuda, F16Memory=cfg.cuda,
                                       CFGScale=GUIDANCE, Options=list(options),
                                       Threads=cfg.threads)
    started = time.perf_counter()
    reply = server.stub.LoadModel(request, timeout=RPC_TIMEOUT)
    seconds = time.perf_counter() - started
    if not reply.success:
        raise RuntimeError(f"LoadModel {list(options)} failed: {reply.message}\n"
                           f"{server.log()[-3000:]}")
    return seconds, reply.message


def server_env(cfg: Config, **extra: str) -> dict[str, str]:
    """Environment of every server: text logs (batch sizes are read from them), threads."""
    env = {"DIFFUSERS_LOG_FORMAT": "text", "DIFFUSERS_LOG_LEVEL": "INFO", **extra}
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(cfg.threads)  # every server thread, not just one
    return env


def burst(pool: ThreadPoolExecutor, server: BackendProcess, n: int, seed: int,
          cfg: Config) -> float:
    """Wall seconds for ``n`` clients sending one request each at the same moment."""
    started = time.perf_counter()
    futures = [pool.submit(served_image, server, cfg.out / f"served-{n}-{i}.png", seed + i, cfg)
               for i in range(n)]
    for future in futures:
        future.result()
    return time.perf_counter() - started


class LogWatch:
    """Reads the batch sizes the server logged for requests made since it was created."""

    def __init__(self, server: BackendProcess) -> None:
        self.server = server
        self.start = len(server.log())

    def batches(self, expected: int) -> list[int]:
        """Pipeline-call sizes, largest first (each request logs its call's size)."""
        deadline = time.monotonic() + 5  # the log line may land just after the reply
        while True:
            sizes = [int(m) for m in _BATCH_FIELD.findall(self.server.log()[self.start:])]
            if len(sizes) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        calls: list[int] = []
        for size in sorted(set(sizes), reverse=True):
            calls += [size] * round(sizes.count(size) / size)
        return calls


@dataclass
class PoissonResult:
    """Latencies, throughput and batches of one batching mode over its rounds."""

    latencies: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)


def poisson(pool: ThreadPoolExecutor, server: BackendProcess, rate: float, seed: int,
            cfg: Config, into: PoissonResult) -> None:
    """Requests arriving as a Poisson process (seeded: both modes see the same arrivals);
    latency counts from each request's scheduled arrival, so client lateness is included."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(POISSON_REQUESTS):
        t += rng.expovariate(rate)
        arrivals.append(t)
    watch = LogWatch(server)
    origin = time.perf_counter() + 0.05

    def one(i: int) -> tuple[float, float]:
        due = origin + arrivals[i]
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        served_image(server, cfg.out / f"poisson-{i}.png", seed + i, cfg)
        done = time.perf_counter()
        return done - due, done

    results = list(pool.map(one, range(POISSON_REQUESTS)))
    span = max(done for _, done in results) - (origin + arrivals[0])
    into.latencies += [latency for latency, _ in results]
    into.throughputs.append(POISSON_REQUESTS / span)
    into.calls += watch.batches(POISSON_REQUESTS)


# --------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------

def peak_memory(run: Callable[[], float], cuda: bool) -> tuple[float, int | None]:
    """Run once, returning its seconds and torch's peak allocated bytes (CUDA only)."""
    import torch

    if not cuda:
        return run(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = run()
    return seconds, int(torch.cuda.max_memory_allocated())


def gpu_breakdown(server: BackendProcess) -> str:
    """The Status memory breakdown: GPU allocated/reserved on a GPU, RSS always."""
    breakdown = dict(server.status().memory.breakdown)
    parts = [f"{key.removeprefix('gpu_')} {fmt_bytes(breakdown[key])}"
             for key in ("gpu_allocated", "gpu_reserved") if key in breakdown]
    parts.append(f"rss {fmt_bytes(breakdown.get('rss', 0))}")
    return ", ".join(parts)


def measure_serving(cfg: Config, path: Path) -> None:
    """Bare vs served single and batches, Poisson static vs dynamic, Health, memory."""
    import torch

    bare = Bare(path, cfg)
    finite = bare.outputs_finite()
    print(f"bare outputs finite: {'yes' if finite else 'NO (timings hold; images are black)'}")
    pool = ThreadPoolExecutor(max(POISSON_REQUESTS, max(BATCH_SIZES)))
    server = start_backend(cfg.out, env=server_env(cfg))
    static: BackendProcess | None = None
    try:
        static = start_backend(cfg.out, env=server_env(cfg, DIFFUSERS_BATCH_WINDOW_MS="0"))
        load(server, path, cfg)  # the first load also waits for torch/diffusers to import
        load_s, load_reply = load(server, path, cfg)
        load(static, path, cfg)
        if "batch_window_ms=" not in static.log():  # the settings line at start-up
            print("note: this server has no DIFFUSERS_BATCH_WINDOW_MS yet: both Poisson modes "
                  "batch alike")

        # -- single image: interleaved pairs -------------------------------------------
        for i in range(2):
            bare.run(1, 1 + i)
            served_image(server, cfg.out / "served-single.png", 1 + i, cfg)
        bare_single, served_single = [], []
        single_peak: int | None = None
        for i in range(cfg.repeats):
            seconds, peak = peak_memory(lambda i=i: bare.run(1, 10 + i), cfg.cuda)
            bare_single.append(seconds)
            single_peak = max(single_peak or 0, peak) if peak is not None else None
            served_single.append(served_image(server, cfg.out / "served-single.png", 10 + i, cfg))
        served_median = statistics.median(served_single)
        rows = [(f"single image ({cfg.repeats} interleaved pairs)",
                 fmt_s(statistics.median(bare_single)), fmt_s(served_median),
                 fmt_ratio([s / b for s, b in zip(served_single, bare_single, strict=True)]),
                 "1")]

        # -- batch N vs N concurrent clients: interleaved pairs ------------------------
        batch_peaks: dict[int, int | None] = {}
        for n in BATCH_SIZES:
            bare_runs, served_runs, calls = [], [], []
            try:
                bare.run(n, 100)  # warm-up: a new batch shape
                burst(pool, server, n, 100, cfg)
                for _ in range(cfg.batch_pairs):
                    seconds, peak = peak_memory(lambda n=n: bare.run(n, 200), cfg.cuda)
                    bare_runs.append(seconds)
                    batch_peaks[n] = max(batch_peaks.get(n) or 0, peak or 0) or None
                    watch = LogWatch(server)
                    served_runs.append(burst(pool, server, n, 200, cfg))
                    calls = watch.batches(n)
            except torch.OutOfMemoryError:  # the bare batch; the server retries one by one
                torch.cuda.empty_cache()
                rows.append((f"batch {n} vs {n} concurrent clients", "OOM", "", "", ""))
                continue
            rows.append((f"batch {n} vs {n} concurrent clients (wall)",
                         fmt_s(statistics.median(bare_runs)), fmt_s(statistics.median(served_runs)),
                         fmt_ratio([s / b for s, b in zip(served_runs, bare_runs, strict=True)]),
                         fmt_calls(calls)))

        # -- Poisson arrivals: static and dynamic batching, alternating ----------------
        for n in BATCH_SIZES:  # warm the static server's batch shapes as the main one's are
            burst(pool, static, n, 300, cfg)
        rate = POISSON_LOAD / served_median
        modes = {"static (DIFFUSERS_BATCH_WINDOW_MS=0)": (static, PoissonResult()),
                 "dynamic (default window)": (server, PoissonResult())}
        for round_ in range(cfg.rounds):
            for target, result in modes.values():
                poisson(pool, target, rate, 1000 * (round_ + 1), cfg, result)
        static.stop()
        static = None

        # -- Health while 16 are queued, then Status memory ------------------------------
        queued = [pool.submit(served_image, server, cfg.out / f"queued-{i}.png", 500 + i, cfg)
                  for i in range(16)]
        time.sleep(0.1)
        health = []
        for _ in range(10):
            t0 = time.perf_counter()
            server.stub.Health(backend_pb2.HealthMessage(), timeout=10)
            health.append(time.perf_counter() - t0)
            time.sleep(0.02)
        drained = all(f.done() for f in queued)
        for future in queued:
            future.result()
        memory_after = gpu_breakdown(server)
        time.sleep(5)
        memory_idle = gpu_breakdown(server)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if static is not None:
            static.stop()
        server.stop()

    print_table("bare diffusers vs served (served/bare: median of pairs, range in brackets)",
                ("measurement", "bare", "served", "served/bare", "server calls"), rows)
    if cfg.px * cfg.px * max(BATCH_SIZES) > SERVER_MAX_BATCH_PIXELS:
        print(f"  note: the server's default DIFFUSERS_MAX_BATCH_PIXELS caps its batches at "
              f"{SERVER_MAX_BATCH_PIXELS // (cfg.px * cfg.px)} images of {cfg.px}x{cfg.px}")
    print_table(
        f"Poisson arrivals: {cfg.rounds} x {POISSON_REQUESTS} requests per mode at {rate:.2f}/s "
        f"(~{POISSON_LOAD:.0%} of one-at-a-time capacity)",
        ("batching", "p50", "p95", "throughput", "server calls"),
        [(name, fmt_s(statistics.median(r.latencies)), fmt_s(percentile(r.latencies, 95)),
          f"{statistics.mean(r.throughputs):.2f} img/s", fmt_calls(r.calls))
         for name, (_, r) in modes.items()],
    )
    print(f"\nLoadModel (imports done, no compile): {fmt_s(load_s)}; server: {load_reply}")
    print(f"Health while 16 requests queued: median {fmt_s(statistics.median(health))}, "
          f"max {fmt_s(max(health))} ({len(health)} calls"
          f"{'; the queue drained before the last call' if drained else ''})")
    peaks = ", ".join([f"single {fmt_bytes(single_peak)}"]
                      + [f"batch {n} {fmt_bytes(batch_peaks.get(n))}" for n in BATCH_SIZES])
    print(f"bare peak GPU memory (torch.cuda.max_memory_allocated): {peaks}")
    print(f"server Status after the bursts: {memory_after}")
    print(f"server Status after 5 s idle:   {memory_idle}")
    print(f"bare single PNG: {cfg.out / 'bare-single.png'}")


def measure_acceleration(cfg: Config, path: Path) -> None:
    """Each acceleration option against the option off, in this process (bench_accel.py)."""
    import bench_accel

    if cfg.arch == "flux":
        options = [(f"cache:{name}", {"cache": name}) for name in
                   ("taylorseer", "first_block", "faster", "pab")]
    else:
        options = [("cache:deepcache", {"cache": "deepcache"})]
    options += [("quantize:int8wo", {"quantize": "int8wo"}),
                ("quantize:fp8", {"quantize": "fp8"}),
                ("compile_regional", {"compile_regional": True, "width": cfg.px,
                                      "height": cfg.px})]
    print(f"\nacceleration options vs off ({cfg.arch}, {cfg.px}x{cfg.px}, {cfg.steps} steps, "
          f"{cfg.repeats} interleaved pairs)")
    bench_accel.print_table([])
    bench_accel.measure_pipeline(path, options, cfg.px, cfg.steps, cfg.repeats, cfg.cuda,
                                 cfg.dtype_name)
    bench_accel.print_table([bench_accel.measure_compile(path, cfg.px, cfg.cuda, cfg.dtype_name)],
                            header=False)


def measure_compile(cfg: Config, path: Path) -> None:
    """Each variant on a fresh server with empty compile caches, so its LoadModel time is a
    first start's (caches from an earlier variant would flatter a later one)."""
    if not cfg.compile_variants:
        print(f"\ntorch.compile: {cfg.compile_skip_reason}")
        return
    rows, notes, off = [], [], None
    for i, (label, options) in enumerate(cfg.compile_variants):
        caches = {"TORCHINDUCTOR_CACHE_DIR": str(cfg.out / f"inductor-{i}"),
                  "TRITON_CACHE_DIR": str(cfg.out / f"triton-{i}")}
        server = start_backend(cfg.out, env=server_env(cfg, **caches))
        try:
            load(server, path, cfg)  # imports, so the timed load below is the model's alone
            try:
                seconds, reply = load(server, path, cfg, options)
            except RuntimeError as exc:
                rows.append((label, "failed", "", "", ""))
                notes.append(f"{label}: {str(exc).splitlines()[0]}")
                continue
            first = served_image(server, cfg.out / "compile.png", 1, cfg)
            steady = statistics.median(served_image(server, cfg.out / "compile.png", 2 + k, cfg)
                                       for k in range(cfg.repeats))
        finally:
            server.stop()
        off = steady if off is None else off
        rows.append((label, fmt_s(seconds), fmt_s(first), fmt_s(steady), f"{steady / off:.2f}x"))
        ignored = [w for w in reply.split("; ") if "compile" in w and "ignored" in w]
        if ignored:
            notes.append(f"{label}: the server ignored it ({'; '.join(ignored)})")
    print_table(f"torch.compile (fresh server each, empty caches; single image median of "
                f"{cfg.repeats})",
                ("model options", "LoadModel", "first image", "single image", "vs off"), rows)
    for note in notes:
        print(f"  note: {note}")


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: with 32 samples p95 is the 31st)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def fmt_ratio(ratios: Sequence[float]) -> str:
    """Median ratio and its range over the pairs."""
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def fmt_calls(calls: Sequence[int]) -> str:
    """Pipeline calls the server made, as batch sizes (``12+4``) or a count and mean."""
    if not calls:
        return "?"
    if len(calls) <= 6:
        return "+".join(map(str, calls))
    return f"{len(calls)} calls, mean {statistics.mean(calls):.1f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())


def measure_continuous(cfg: Config, path: Path) -> None:
    """Step-level vs request-level batching under Poisson arrivals (bench_continuous.py's
    rows) on this model and size: ``--part continuous``."""
    from bench_continuous import main as continuous

    print("\nstep-level vs request-level batching (bench_continuous.py)")
    continuous(["--model", str(path), "--size", str(cfg.px),
                "--requests", "40" if cfg.cuda else "12", "--repeats", str(cfg.repeats)])


def measure_parallel(cfg: Config, path: Path) -> None:
    """TensorParallelSize over 1, 2, 4 and 8 GPUs (as many as are visible): context-parallel
    workers (NCCL, Ulysses) against one GPU, steps per second (bench_context_parallel.py)."""
    import torch
    from bench_context_parallel import measure, print_table

    count = torch.cuda.device_count() if cfg.cuda else 2
    worlds = [n for n in (1, 2, 4, 8) if n <= count]
    print(f"\ncontext parallelism ({cfg.arch}, {cfg.px}x{cfg.px}, {cfg.steps} steps, "
          f"{cfg.repeats} interleaved repeats; {count} GPUs visible)")
    print_table([])
    runs = [(world, cfg.threads) for world in worlds]
    measure(cfg.arch, path, runs, cfg.px, cfg.steps, cfg.repeats, cfg.cuda, cfg.dtype_name)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({cores} cores)"


def main(argv: Sequence[str] | None = None) -> None:
    began = time.monotonic()
    cfg = parse_args(argv)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # The dynamic-batching server must run the default window, whatever this shell exports.
    if os.environ.pop("DIFFUSERS_BATCH_WINDOW_MS", None) is not None:
        print("note: DIFFUSERS_BATCH_WINDOW_MS from the environment dropped (default measured)")
    print(f"bench_gpu.py  {date.today().isoformat()}  device: {device_name()}")
    weights = "tests' tiny SD" if cfg.arch == "tiny" else f"random weights x{WEIGHT_SCALE}"
    versions = ", ".join(f"{d} {metadata.version(d)}"
                         for d in ("torch", "diffusers", "transformers"))
    print(f"arch {cfg.arch} ({weights}), {cfg.px}x{cfg.px}, {cfg.steps} steps, guidance "
          f"{GUIDANCE}, {cfg.dtype_name}, torch CPU threads {torch.get_num_threads()}; {versions}")
    started = time.monotonic()
    path = model_path(cfg)
    print(f"model: {path} (ready in {time.monotonic() - started:.1f} s)")
    if cfg.part == "accel":
        measure_acceleration(cfg, path)
    elif cfg.part == "continuous":
        measure_continuous(cfg, path)
    elif cfg.part == "parallel":
        measure_parallel(cfg, path)
    else:
        if cfg.serving:
            measure_serving(cfg, path)
        measure_compile(cfg, path)
    print(f"\nwhole run {time.monotonic() - began:.0f} s; images in {cfg.out}")


if __name__ == "__main__":
    main()

"""Mixed soak: images, videos, upscales and cancelled calls from several clients while a
swapper thread switches the loaded model between an image and a video model; counts every
status, INTERNAL answers and lost outputs, and samples the server's resident memory and
thread count, so a leak shows as a slope.

Why: issue 25 asks that no mix of traffic (generation of every kind, model swaps, callers
that give up) ever answers INTERNAL, loses an output or grows the process.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak_mixed.py --calls 5000 --clients 4

Each call picks its kind in turn from what is loaded now: an image or a cancelled image on
the image model, a video or a cancelled video on the video model, an upscale (a Lanczos
resize, no model needed) on either. A call that meets a swap gets a typed refusal, counted.
An image call that waited through a swap to the video model is planned again and served as
a video (docs/engine.md), so a whole MP4 counts as its output. A cancelled call is a real
one with a deadline too short to finish (DEADLINE_EXCEEDED is its expected answer; OK is
counted too, when it was quick enough); after it, its ``dst`` must not hold a partial file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import grpc  # noqa: E402
import psutil  # noqa: E402
from harness import PNG_MAGIC, backend_pb2, start_backend  # noqa: E402
from soak_video import Tally, complete_mp4  # noqa: E402
from tiny_models import tiny_sd_path  # noqa: E402
from tiny_video_models import tiny_text_to_video_path  # noqa: E402

KINDS = {"image": ("image", "image_cancel", "upscale"),
         "video": ("video", "video_cancel", "upscale")}
CANCEL_DEADLINE_S = 0.05


class Loaded:
    """Which kind of model the swapper loaded last (clients read it to choose a call)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def whole_png(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return data.startswith(PNG_MAGIC) and data.rstrip().endswith(b"IEND\xaeB`\x82")


def call(server, kind: str, dst: Path, n: int, src: Path) -> None:
    """One call of ``kind``; raises grpc.RpcError as the server answers."""
    cancel = kind.endswith("_cancel")
    timeout = CANCEL_DEADLINE_S if cancel else 120
    if kind.startswith("image"):
        server.stub.GenerateImage(backend_pb2.GenerateImageRequest(
            positive_prompt=f"a cube {n}", dst=str(dst), width=64, height=64,
            step=4 if cancel else 2, seed=n), timeout=timeout)
    elif kind.startswith("video"):
        server.stub.GenerateVideo(backend_pb2.GenerateVideoRequest(
            prompt=f"a cube {n}", dst=str(dst), width=32, height=32, num_frames=2,
            step=2 if cancel else 1, seed=n, fps=8), timeout=timeout)
    else:
        server.stub.UpscaleImage(backend_pb2.UpscaleImageRequest(
            src=str(src), dst=str(dst), scale=2), timeout=timeout)


def client(server, out: Path, index: int, tally: Tally, limit: int, deadline: float,
           loaded: Loaded, src: Path) -> None:
    turns = itertools.count()
    while tally.take(limit, deadline):
        n = next(turns)
        kinds = KINDS[loaded.kind]
        kind = kinds[(n + index) % len(kinds)]
        dst = out / f"c{index}-{n}.{'mp4' if kind.startswith('video') else 'png'}"
        try:
            call(server, kind, dst, n, src)
            code, detail = "OK", ""
        except grpc.RpcError as exc:
            code, detail = exc.code().name, exc.details() or ""
        # an image call re-planned onto a video model that a swap loaded while it waited is
        # served as a video (docs/engine.md): a whole MP4 at its dst is a whole output too
        whole = whole_png(dst) or complete_mp4(dst) > 0
        with tally.lock:
            tally.codes[f"{kind}:{code}"] += 1
            if code in ("INTERNAL", "UNKNOWN"):
                tally.internal.append(f"{kind}: {detail}")
            elif code not in ("OK", "DEADLINE_EXCEEDED"):
                tally.refusals.append(f"{kind} {code}: {detail[:160]}")
            if code == "OK" and not whole:
                head = dst.read_bytes()[:8] if dst.exists() else b"(missing)"
                tally.lost.append(f"{kind} {dst} (OK, not a whole file: starts {head!r})")
            elif code != "OK" and dst.exists():
                tally.lost.append(f"{dst} (left behind, yet {code})")
        dst.unlink(missing_ok=True)


def swapper(server, models: list[tuple[str, Path]], every_s: float, stop: threading.Event,
            tally: Tally, loaded: Loaded) -> None:
    for turn in itertools.count(1):
        if stop.wait(every_s):
            return
        kind, model = models[turn % len(models)]
        try:
            result = server.load(model)
            outcome = "ok" if result.success else f"failed: {result.message[:80]}"
            if result.success:
                loaded.kind = kind
        except grpc.RpcError as exc:
            outcome = exc.code().name
        with tally.lock:
            tally.loads[outcome] += 1


def sampler(pid: int, every_s: float, stop: threading.Event,
            samples: list[tuple[float, int, int]]) -> None:
    """(seconds, RSS MiB, threads) of the server every ``every_s``."""
    proc, start = psutil.Process(pid), time.monotonic()
    while not stop.wait(every_s):
        try:
            samples.append((round(time.monotonic() - start, 1),
                            proc.memory_info().rss >> 20, proc.num_threads()))
        except psutil.Error:
            return


def trend(samples: list[tuple[float, int, int]]) -> dict[str, object]:
    """RSS and threads over the run, warm-up (the first fifth) left out."""
    steady = samples[len(samples) // 5:] or samples
    if not steady:
        return {}
    rss = [s[1] for s in steady]
    threads = [s[2] for s in steady]
    quarter = max(1, len(steady) // 4)
    # The mean of each tenth too: a leak climbs through them, while a swap between the
    # image and the video model only moves them up and down.
    tenths = [rss[i * len(rss) // 10:(i + 1) * len(rss) // 10] for i in range(10)]
    return {"rss_mib_by_tenth": [round(sum(t) / len(t)) for t in tenths if t],
            "rss_mib_first_quarter": round(sum(rss[:quarter]) / quarter),
            "rss_mib_last_quarter": round(sum(rss[-quarter:]) / quarter),
            "rss_mib_max": max(rss), "threads_min": min(threads),
            "threads_max": max(threads), "threads_last": threads[-1], "samples": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=float("inf"),
                        help="stop starting calls after this long (whatever --calls says)")
    parser.add_argument("--swap-every", type=float, default=20.0, help="seconds between loads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    models = [("image", tiny_sd_path()), ("video", tiny_text_to_video_path())]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "src.png"
        from PIL import Image

        Image.new("RGB", (32, 32), (200, 40, 40)).save(src)
        server = start_backend(work, env={"PYTHON_GRPC_MAX_WORKERS": str(args.clients + 1)})
        try:
            first = server.load(models[0][1])
            assert first.success, first.message
            tally, stop, loaded = Tally(), threading.Event(), Loaded("image")
            tally.refusals = []  # typed refusals (a call meeting a swap), shown by example
            samples: list[tuple[float, int, int]] = []
            started = time.perf_counter()
            deadline = time.monotonic() + args.seconds
            helpers = [threading.Thread(target=swapper, args=(server, models, args.swap_every,
                                                              stop, tally, loaded)),
                       threading.Thread(target=sampler, args=(server.proc.pid, 2.0, stop,
                                                              samples))]
            clients = [threading.Thread(target=client, args=(server, work, i, tally,
                                                             args.calls, deadline, loaded,
                                                             src))
                       for i in range(args.clients)]
            for thread in helpers + clients:
                thread.start()
            for thread in clients:
                thread.join()
            stop.set()
            for thread in helpers:
                thread.join()
            elapsed = time.perf_counter() - started
            alive = server.proc.poll() is None
        finally:
            server.stop()
    report = {
        "calls": sum(tally.codes.values()), "clients": args.clients,
        "load_average_1min": round(os.getloadavg()[0], 1), "seconds": round(elapsed, 1),
        "server_alive_at_end": alive, "codes": dict(sorted(tally.codes.items())),
        "internal_or_unknown": len(tally.internal), "lost_outputs": len(tally.lost),
        "model_loads": dict(tally.loads), "memory_and_threads": trend(samples),
        "internal_examples": tally.internal[:5], "lost_examples": tally.lost[:5],
        "refusal_examples": tally.refusals[:5],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if not tally.internal and not tally.lost and alive else 1


if __name__ == "__main__":
    sys.exit(main())

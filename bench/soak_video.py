"""Soak test: thousands of tiny GenerateVideo calls from several clients while a swapper
thread keeps switching the loaded model; counts every status, INTERNAL answers and lost
outputs (status OK but no complete MP4 at ``dst``).

Why: an MP4 writer that forked ffmpeg inside the multithreaded gRPC process lost about
1.3 % of videos with INTERNAL "Broken pipe" (issue 16). Encoding now runs in process
(PyAV); this run shows whether any call is still lost.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak_video.py --calls 3000 --clients 4

Swaps alternate between two video models (tiny text-to-video and tiny Wan) so every
request the server accepts can be served by whatever is loaded; a request that meets a
load in progress may be refused with a typed status, which is counted, never hidden.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import grpc  # noqa: E402
from harness import backend_pb2, start_backend  # noqa: E402
from tiny_video_models import tiny_text_to_video_path, tiny_wan_path  # noqa: E402


def complete_mp4(path: Path) -> int:
    """Frames decoded from ``path``; 0 when it is missing or not a whole MP4."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (OSError, ValueError, av.error.FFmpegError):
        return 0


class Tally:
    """Thread-safe counters of one soak run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: collections.Counter[str] = collections.Counter()
        self.lost: list[str] = []
        self.internal: list[str] = []
        self.loads: collections.Counter[str] = collections.Counter()
        self.calls = 0

    def take(self, limit: int, deadline: float = float("inf")) -> bool:
        with self.lock:
            if self.calls >= limit or time.monotonic() > deadline:
                return False
            self.calls += 1
            return True


def client(server, out: Path, index: int, tally: Tally, limit: int, frames: int,
           deadline: float) -> None:
    n = 0
    while tally.take(limit, deadline):
        n += 1
        dst = out / f"c{index}-{n}.mp4"
        request = backend_pb2.GenerateVideoRequest(
            prompt=f"a cube {n}", dst=str(dst), width=32, height=32, num_frames=frames,
            step=1, seed=n, fps=8)
        try:
            server.stub.GenerateVideo(request, timeout=120)
            code, detail = "OK", ""
        except grpc.RpcError as exc:
            code, detail = exc.code().name, exc.details() or ""
        with tally.lock:
            tally.codes[code] += 1
            if code == "INTERNAL":
                tally.internal.append(detail)
        if code == "OK":
            if complete_mp4(dst) < 1:
                with tally.lock:
                    tally.lost.append(str(dst))
            dst.unlink(missing_ok=True)
        elif dst.exists():
            with tally.lock:
                tally.lost.append(f"{dst} (written, yet {code})")


def swapper(server, models: list[Path], every_s: float, stop: threading.Event,
            tally: Tally) -> None:
    turn = 0
    while not stop.wait(every_s):
        turn += 1
        model = models[turn % len(models)]
        try:
            result = server.load(model)
            outcome = "ok" if result.success else f"failed: {result.message[:80]}"
        except grpc.RpcError as exc:
            outcome = exc.code().name
        with tally.lock:
            tally.loads[outcome] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=float("inf"),
                        help="stop starting calls after this long (whatever --calls says)")
    parser.add_argument("--swap-every", type=float, default=5.0, help="seconds between loads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    models = [tiny_text_to_video_path(), tiny_wan_path()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = start_backend(work, env={"PYTHON_GRPC_MAX_WORKERS": str(args.clients)})
        try:
            first = server.load(models[0])
            assert first.success, first.message
            tally, stop = Tally(), threading.Event()
            started = time.perf_counter()
            deadline = time.monotonic() + args.seconds
            swap = threading.Thread(target=swapper,
                                    args=(server, models, args.swap_every, stop, tally))
            swap.start()
            clients = [threading.Thread(target=client,
                                        args=(server, work, i, tally, args.calls, args.frames,
                                              deadline))
                       for i in range(args.clients)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            stop.set()
            swap.join()
            elapsed = time.perf_counter() - started
            fork_warnings = server.log().count("skipping fork() handlers")
        finally:
            server.stop()
    report = {
        "calls": sum(tally.codes.values()), "clients": args.clients, "frames": args.frames,
        "load_average_1min": round(os.getloadavg()[0], 1),
        "seconds": round(elapsed, 1), "codes": dict(tally.codes),
        "internal": len(tally.internal), "lost_outputs": len(tally.lost),
        "model_loads": dict(tally.loads), "fork_warnings_in_log": fork_warnings,
        "internal_examples": tally.internal[:5], "lost_examples": tally.lost[:5],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if not tally.internal and not tally.lost else 1


if __name__ == "__main__":
    sys.exit(main())

"""``diffusers-client``: drive a running backend from the command line.

For trying a model or a server by hand without a LocalAI host: load a model, generate an
image or a video to a file, upscale, and read Status and Health. ``make install`` puts the
command into ``.venv/bin`` (``python -m diffusers_backend.serving.client`` is the same).
The token comes from ``LOCALAI_GRPC_AUTH_TOKEN`` (as the server's does). While a call runs,
the elapsed seconds tick on stderr, with a step bar and ETA for ``image`` and ``video`` (from
the Progress service: ``client_progress``); ``watch`` prints every progress event. The exit
code is the gRPC status code's number (0 OK, 3
INVALID_ARGUMENT, 14 UNAVAILABLE...), 1 for a LoadModel that answered ``success=false``, and
141 when whoever read the output went away (``| head``), as for a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from diffusers_backend.serving.client_edit import add_edit_arguments, edit_request
from diffusers_backend.serving.listen import split_addr

try:
    import grpc
except ImportError as missing:  # a Python without the backend's packages (the system one)
    raise SystemExit(f"diffusers-client: {missing}. Run it with the project's environment: "
                     ".venv/bin/diffusers-client (`make install` creates it)") from None

DEFAULT_ADDR = "127.0.0.1:50051"
QUICK_TIMEOUT_S = 10.0  # Health, Status, Free
LOAD_FAILED_EXIT = 1
CLOSED_PIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left
_NO_SERVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
CONNECT_PROBE_S = 1.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class Progress:
    """Elapsed seconds on stderr while a call runs: one rewritten line on a terminal,
    a line per tick otherwise (logs, CI), nothing with ``--quiet``."""

    def __init__(self, label: str, interval: float, stream: TextIO, quiet: bool) -> None:
        self.label, self.interval, self.stream, self.quiet = label, interval, stream, quiet
        self.started = time.monotonic()
        self._tty = stream.isatty()
        self._shown = False
        self.bar: Any = None  # a client_progress.StepBar: steps and ETA beside the time

    def prefix(self) -> str:
        return f"{self.label}... {time.monotonic() - self.started:.0f}s "

    def tick(self) -> None:
        """Show the time spent so far."""
        if self.quiet:
            return
        text = f"{self.label}... {time.monotonic() - self.started:.0f}s"
        if self._tty and self.bar is not None and self.bar.text():
            self.bar.draw()
            self._shown = True
            return
        if self._tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        """End the ticking line (terminal) so the result starts on a line of its own."""
        if self._shown and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def wait_with_progress(future: Any, progress: Progress) -> Any:
    """The call's result, ticking ``progress`` until it arrives (Ctrl-C cancels the call)."""
    try:
        while True:
            try:
                return future.result(timeout=progress.interval)
            except grpc.FutureTimeoutError:
                progress.tick()
    except KeyboardInterrupt:
        future.cancel()
        raise
    finally:
        if progress.bar is not None:
            progress.bar.stop()
        progress.done()


def _stubs() -> tuple[Any, Any]:
    """The generated stubs live at the repository root; made here if still missing."""
    from diffusers_backend.serving.protogen import generate

    generate()
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    import backend_pb2
    import backend_pb2_grpc

    return backend_pb2, backend_pb2_grpc


def _abs(path: str) -> str:
    """The server may run in another directory: send absolute paths."""
    return os.path.abspath(path) if path else ""


def _key_values(items: Sequence[str], sep: str, what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, found, value = item.partition(sep)
        if not found or not key:
            raise SystemExit(f"{what} must be KEY{sep}VALUE, got {item!r}")
        out[key] = value
    return out


# -- requests ---------------------------------------------------------------------------
def load_request(pb: Any, args: argparse.Namespace) -> Any:
    """ModelOptions from the ``load`` arguments (paths made absolute when they exist)."""
    model = args.model
    if os.path.exists(model):
        model = os.path.abspath(model)
    return pb.ModelOptions(
        Model=model, ModelPath=_abs(args.model_path), PipelineType=args.pipeline_type,
        SchedulerType=args.scheduler, CUDA=args.cuda, F16Memory=args.f16,
        LowVRAM=args.low_vram, IMG2IMG=args.img2img, CFGScale=args.cfg_scale,
        ControlNet=args.controlnet, LoraAdapters=args.lora, LoraScales=args.lora_scale,
        Options=args.option, Seed=args.seed)


def image_request(pb: Any, args: argparse.Namespace) -> Any:
    """GenerateImageRequest from the ``image`` arguments."""
    return pb.GenerateImageRequest(
        positive_prompt=args.prompt, negative_prompt=args.negative, width=args.width,
        height=args.height, step=args.steps, seed=args.seed, dst=_abs(args.output),
        src=_abs(args.src), ref_images=[_abs(r) for r in args.ref])


def video_request(pb: Any, args: argparse.Namespace) -> Any:
    """GenerateVideoRequest from the ``video`` arguments."""
    return pb.GenerateVideoRequest(
        prompt=args.prompt, negative_prompt=args.negative, start_image=_abs(args.start_image),
        end_image=_abs(args.end_image), width=args.width, height=args.height,
        num_frames=args.frames, fps=args.fps, seed=args.seed, cfg_scale=args.cfg_scale,
        step=args.steps, dst=_abs(args.output), params=_key_values(args.param, "=", "--param"))


def upscale_request(pb: Any, args: argparse.Namespace) -> Any:
    """UpscaleImageRequest from the ``upscale`` arguments."""
    return pb.UpscaleImageRequest(src=_abs(args.src), dst=_abs(args.output), scale=args.scale)


# -- commands ---------------------------------------------------------------------------
def _video_reply(message: str, output: str) -> str:
    """``image`` on a video model: the server wrote an MP4 at ``output``. A picture's name
    would make viewers open it as one, so such a file is renamed to end in .mp4."""
    path = Path(_abs(output))
    video = path.with_suffix(".mp4")
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return message + "\nnote: the loaded model makes videos; that file is an MP4"
    if video.exists():
        return (message + f"\nnote: the loaded model makes videos; {path.name} is an MP4 "
                f"(not renamed: {video.name} exists)")
    path.rename(video)
    return (message.replace(str(path), str(video), 1)
            + f"\nnote: the loaded model makes videos; renamed {path.name} to {video.name}")


def _call(args: argparse.Namespace, method: Any, request: Any, label: str,
          timeout: float | None, dst: str = "") -> Any:
    progress = Progress(label, args.progress_interval, sys.stderr, args.quiet)
    preview = _abs(getattr(args, "preview", ""))
    if dst and (preview or not args.quiet):  # a generation: its steps from Progress.Watch
        from diffusers_backend.serving.client_progress import StepBar

        progress.bar = StepBar(args.channel, args.metadata, dst, sys.stderr,
                               show=not args.quiet, preview=preview, prefix=progress.prefix)
        progress.bar.start()
    future = method.future(request, timeout=args.timeout or timeout, metadata=args.metadata,
                           wait_for_ready=args.wait)
    return wait_with_progress(future, progress)


def run_command(args: argparse.Namespace, stub: Any, pb: Any) -> int:
    """Send the command's RPC, print its answer, return the exit code (0 or 1)."""
    command = args.command
    if command == "health":
        reply = _call(args, stub.Health, pb.HealthMessage(), "health", QUICK_TIMEOUT_S)
        print(reply.message.decode(errors="replace"))
        return 0
    if command == "status":
        reply = _call(args, stub.Status, pb.HealthMessage(), "status", QUICK_TIMEOUT_S)
        print(json.dumps({"state": pb.StatusResponse.State.Name(reply.state),
                          "memory": {"total": reply.memory.total,
                                     "breakdown": dict(reply.memory.breakdown)}}, indent=2))
        return 0
    if command == "free":
        reply = _call(args, stub.Free, pb.HealthMessage(), "free", QUICK_TIMEOUT_S)
    elif command == "load":
        reply = _call(args, stub.LoadModel, load_request(pb, args), "loading", None)
        if not reply.success:
            print(f"error: LoadModel failed: {reply.message}", file=sys.stderr)
            return LOAD_FAILED_EXIT
    elif command == "watch":
        from diffusers_backend.serving.client_progress import watch

        return watch(args.channel, args.metadata, _abs(args.dst), args.json)
    elif command == "image":
        request = image_request(pb, args)
        reply = _call(args, stub.GenerateImage, request, "generating", None, request.dst)
        if reply.message.startswith("video written to "):
            print(_video_reply(reply.message, args.output))
            return 0
    elif command == "edit":
        reply = _call(args, stub.GenerateImage, edit_request(pb, args), "editing", None)
    elif command == "video":
        request = video_request(pb, args)
        reply = _call(args, stub.GenerateVideo, request, "generating", None, request.dst)
    else:
        reply = _call(args, stub.UpscaleImage, upscale_request(pb, args), "upscaling", None)
    print(reply.message)
    return 0


def _generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--width", type=int, default=0, help="0: the model's default")
    parser.add_argument("--height", type=int, default=0, help="0: the model's default")
    parser.add_argument("--steps", type=int, default=0, help="0: the model's default")
    parser.add_argument("--seed", type=int, default=0, help="0: random (reported in the reply)")
    parser.add_argument("--preview", default="", metavar="FILE",
                        help="keep the latest preview (PNG) of the picture as it forms here")


def _connection_args(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Options every command takes. Added to the main parser with defaults and to each
    command with none (SUPPRESS), so they work before or after the command."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--addr", default=default(DEFAULT_ADDR),
                        help=f"server (default {DEFAULT_ADDR})")
    parser.add_argument("--timeout", type=float, default=default(None),
                        help="deadline in seconds (default: none for load/generation, 10 s "
                        "for health/status/free)")
    parser.add_argument("--wait", action="store_true", default=default(False),
                        help="wait for the server to come up instead of failing at once")
    parser.add_argument("--progress-interval", type=float, default=default(1.0),
                        metavar="SECONDS",
                        help="how often the elapsed time ticks on stderr (default 1)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The command line: connection options, then one subcommand per RPC."""
    parser = argparse.ArgumentParser(
        prog="diffusers-client",
        description="Command-line client for the diffusers backend. The token is read from "
        "LOCALAI_GRPC_AUTH_TOKEN. Exit code: the gRPC status code (0 OK), 1 when LoadModel "
        "answers success=false.")
    _connection_args(parser, defaults=True)
    shared = argparse.ArgumentParser(add_help=False)
    _connection_args(shared, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, parents=[shared])

    command("health", "Health: prints OK")
    command("status", "Status: state and memory as JSON")
    command("free", "Free: unload the model")

    load = command("load", "LoadModel: a Hub id, folder or checkpoint file")
    load.add_argument("model")
    load.add_argument("--model-path", default="", help="models folder (ModelPath)")
    load.add_argument("--pipeline-type", default="", help="class name or task, e.g. img2img")
    load.add_argument("--scheduler", default="", help="e.g. k_dpmpp_2m, euler_a")
    load.add_argument("--cuda", action="store_true", help="place the model on the GPU")
    load.add_argument("--f16", action="store_true", help="half precision")
    load.add_argument("--low-vram", action="store_true", help="model CPU offload")
    load.add_argument("--img2img", action="store_true")
    load.add_argument("--cfg-scale", type=float, default=0.0)
    load.add_argument("--controlnet", default="")
    load.add_argument("--lora", action="append", default=[], help="LoRA adapter (repeatable)")
    load.add_argument("--lora-scale", type=float, action="append", default=[])
    load.add_argument("--option", action="append", default=[], metavar="KEY:VALUE",
                      help='model option, e.g. "guidance_scale:0" (repeatable)')
    load.add_argument("--seed", type=int, default=0)

    image = command("image", "GenerateImage: write a PNG (an MP4 on a video model)")
    _generation_args(image)
    image.add_argument("--src", default="", help="input image (img2img) or inpainting JSON")
    image.add_argument("--ref", action="append", default=[], help="reference image")

    edit = command("edit", "GenerateImage from reference images (--ref, repeatable; --mask)")
    _generation_args(edit)
    add_edit_arguments(edit)

    video = command("video", "GenerateVideo: write an MP4")
    _generation_args(video)
    video.add_argument("--start-image", default="", help="image-to-video start frame")
    video.add_argument("--end-image", default="")
    video.add_argument("--frames", type=int, default=0, help="0: the model's default")
    video.add_argument("--fps", type=int, default=0)
    video.add_argument("--cfg-scale", type=float, default=0.0)
    video.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="extra pipeline argument (repeatable)")

    watch = command("watch", "Progress.Watch: print every progress event, one line each")
    watch.add_argument("--dst", default="", help="only the request writing this file (the "
                       "stream ends with it)")
    watch.add_argument("--json", action="store_true", help="JSON lines")

    upscale = command("upscale", "UpscaleImage: write a PNG")
    upscale.add_argument("src", help="image to upscale")
    upscale.add_argument("-o", "--output", required=True)
    upscale.add_argument("--scale", type=int, default=0, help="0: 2x")
    return parser


def _nothing_listens(addr: str) -> bool:
    """Whether no TCP connection opens at ``addr``: a call that failed so failed because
    there is no server, not because a server refused it or was slow."""
    try:
        host, port = split_addr(addr)
    except ValueError:  # unix:... and other gRPC targets: no plain check
        return False
    try:
        with socket.create_connection((host, port), timeout=CONNECT_PROBE_S):
            return False
    except OSError:
        return True


def _error_line(exc: grpc.RpcError, args: argparse.Namespace,
                waited: float) -> tuple[str, int]:
    """The one line printed for a failed call, and the exit code (the status number)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    code = code or grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    if code in _NO_SERVER_CODES and _nothing_listens(args.addr):
        code = grpc.StatusCode.UNAVAILABLE
        if args.wait:
            details = f"no server answered at {args.addr} within {waited:.0f} s"
        else:
            details = (f"no server answered at {args.addr}; start one (make run), check "
                       "--addr, or add --wait to wait for one that is starting")
    return f"error: {code.name}: {details}", int(code.value[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, connect, run one command; return the exit code (see the module doc)."""
    args = build_parser().parse_args(argv)
    token = os.environ.get("LOCALAI_GRPC_AUTH_TOKEN", "").strip()
    args.metadata = (("authorization", f"Bearer {token}"),) if token else ()
    pb, pb_grpc = _stubs()
    started = time.monotonic()
    with grpc.insecure_channel(args.addr) as channel:
        args.channel = channel  # for the Progress service (client_progress)
        try:
            return run_command(args, pb_grpc.BackendStub(channel), pb)
        except grpc.RpcError as exc:
            line, code = _error_line(exc, args, time.monotonic() - started)
            print(line, file=sys.stderr)
            return code
        except KeyboardInterrupt:
            print("error: CANCELLED: interrupted", file=sys.stderr)
            return int(grpc.StatusCode.CANCELLED.value[0])


def run() -> None:
    """The ``diffusers-client`` command: exit with main's code; a reader that went away
    (``diffusers-client status | head -1``) ends it quietly, as it does other tools."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and print a second error: point it at
        # /dev/null first (the recipe in Python's signal module documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = CLOSED_PIPE_EXIT
    # Everything is said: end here rather than in interpreter finalization, where gRPC call
    # objects still referenced (a progress stream's) can wait forever on a lock held by a
    # daemon thread that finalization froze.
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

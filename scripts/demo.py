"""``make demo``: a picture from this backend with no network and nothing to download.

Builds a tiny Stable Diffusion model with random weights into ``models/tiny-sd`` (the same
tiny model the tests use, a few MB), starts the backend on a free loopback port, loads the
model and draws ``demo.png`` through ``diffusers-client``, then stops the server. The
picture is noise, since the weights are random, but every part a real model uses runs: the
server, LoadModel, the diffusers pipeline and the PNG written at the path asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package, also when the project is not installed
MODEL_NAME = "tiny-sd"
SIZE, STEPS, SEED = 128, 4, 42
START_TIMEOUT_S = 120


def build_tiny_model(folder: Path) -> None:
    """A random-weight StableDiffusionPipeline saved as a diffusers folder (written
    beside ``folder`` first, then renamed, so a half-written model never looks whole)."""
    sys.path.insert(0, str(ROOT / "tests"))
    for library in ("DIFFUSERS", "TRANSFORMERS"):  # no progress bars or notices
        os.environ.setdefault(f"{library}_VERBOSITY", "error")
    chatter = io.StringIO()  # the libraries' import-time notices, shown only on failure
    try:
        with contextlib.redirect_stderr(chatter):
            from diffusers import StableDiffusionPipeline
            from tiny_models import tiny_clip_tokenizer, tiny_sd_components

            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
            pipe.save_pretrained(partial)
            tiny_clip_tokenizer(save_to=partial / "tokenizer")
    except BaseException:
        sys.stderr.write(chatter.getvalue())
        raise
    partial.rename(folder)


def free_loopback_addr() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def client(*argv: str) -> int:
    """One ``diffusers-client`` command, run in this process."""
    from diffusers_backend.serving.client import main

    return main(list(argv))


def draw(addr: str, model: Path, output: Path) -> int:
    """Wait for the server, load the tiny model, draw the picture; the first failing code."""
    with contextlib.redirect_stdout(io.StringIO()):  # health prints OK
        code = client("--addr", addr, "-q", "--wait", "--timeout", str(START_TIMEOUT_S),
                      "health")
    return code or client("--addr", addr, "-q", "load", str(model)) or client(
        "--addr", addr, "-q", "image", "a red cube on a table", "-o", str(output),
        "--width", str(SIZE), "--height", str(SIZE), "--steps", str(STEPS),
        "--seed", str(SEED))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="models folder (default ./models)")
    parser.add_argument("-o", "--output", default="demo.png", help="picture to write")
    parser.add_argument("--addr", default="", help="serve here (default: a free port)")
    args = parser.parse_args(argv)
    model, output = Path(args.models) / MODEL_NAME, Path(args.output)
    if not model.is_dir():
        model.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_model(model)
    print(f"tiny model with random weights in {model}", flush=True)
    addr = args.addr or free_loopback_addr()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFUSERS_LOG_LEVEL": "WARNING",
           "LOCALAI_BACKEND_PARENT_WATCH": "true"}
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen([sys.executable, "-m", "diffusers_backend", "--addr", addr],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        print(f"server on {addr}", flush=True)
        try:
            code = draw(addr, model, output)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        if code:
            log.seek(0)
            print("the server's log:\n" + log.read(), file=sys.stderr)
            return code
    print(f"{output}: a {SIZE}x{SIZE} picture from random weights (noise is expected)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

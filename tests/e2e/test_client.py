"""``python -m diffusers_backend.serving.client`` end to end against a real server with a token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from harness import REPO_ROOT, free_port, start_backend
from PIL import Image
from tiny_video_models import tiny_text_to_video_path
from video_read import read_video

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = start_backend(tmp_path_factory.mktemp("client"),
                            env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN},
                            metadata=(("authorization", f"Bearer {TOKEN}"),))
    yield backend
    backend.stop()


def client(addr: str, *args: str, token: str | None = TOKEN, cwd=REPO_ROOT):
    env = {k: v for k, v in os.environ.items() if k != "LOCALAI_GRPC_AUTH_TOKEN"}
    if token is not None:
        env["LOCALAI_GRPC_AUTH_TOKEN"] = token
    env["PYTHONPATH"] = str(REPO_ROOT)  # for runs from another directory
    return subprocess.run([sys.executable, "-m", "diffusers_backend.serving.client", "--addr", addr,
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_health_and_auth(server):
    ok = client(server.addr, "health")
    assert (ok.returncode, ok.stdout) == (0, "OK\n")
    denied = client(server.addr, "health", token=None)
    assert denied.returncode == 16  # UNAUTHENTICATED
    assert "error: UNAUTHENTICATED: missing or invalid authorization" in denied.stderr


def test_unreachable_server_is_unavailable():
    result = client(f"127.0.0.1:{free_port()}", "status")
    assert result.returncode == 14
    assert result.stderr.startswith("error: UNAVAILABLE")


def test_load_generate_upscale_video_status(server, tiny_sd, tmp_path):
    before = client(server.addr, "status")
    assert before.returncode == 0
    assert json.loads(before.stdout)["state"] == "UNINITIALIZED"

    no_model = client(server.addr, "image", "a cat", "-o", str(tmp_path / "x.png"))
    assert no_model.returncode == 9  # FAILED_PRECONDITION
    missing = client(server.addr, "load", str(tmp_path / "missing-model"))
    assert missing.returncode == 1  # LoadModel success=false
    assert "error: LoadModel failed: " in missing.stderr

    loaded = client(server.addr, "load", str(tiny_sd), "--scheduler", "euler")
    assert loaded.returncode == 0, loaded.stderr
    assert "as StableDiffusionPipeline" in loaded.stdout

    # A relative output path: the client sends it as an absolute one.
    made = client(server.addr, "--progress-interval", "0.05", "image", "a red cube",
                  "-o", "cube.png", "--width", "128", "--height", "96", "--steps", "12",
                  "--seed", "5", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"image written to {tmp_path / 'cube.png'}; seed=5; 128x96")
    assert "generating... " in made.stderr  # elapsed time ticked while it ran
    assert Image.open(tmp_path / "cube.png").size == (128, 96)

    bad = client(server.addr, "-q", "image", "x", "-o", str(tmp_path / "bad.png"),
                 "--width", "-8")
    assert bad.returncode == 3  # INVALID_ARGUMENT
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: width must be positive")

    big = client(server.addr, "upscale", str(tmp_path / "cube.png"), "-o",
                 str(tmp_path / "big.png"), "--scale", "2")
    assert big.returncode == 0, big.stderr
    assert Image.open(tmp_path / "big.png").size == (256, 192)

    assert client(server.addr, "load", str(tiny_text_to_video_path())).returncode == 0
    clip = client(server.addr, "-q", "video", "a cat", "-o", str(tmp_path / "clip.mp4"),
                  "--frames", "4", "--fps", "5", "--width", "64", "--height", "64",
                  "--steps", "2", "--seed", "3")
    assert clip.returncode == 0, clip.stderr
    assert "frames=4" in clip.stdout and clip.stderr == ""
    assert read_video(tmp_path / "clip.mp4").frames.shape == (4, 64, 64, 3)
    # The video's request log line has its timings split too.
    assert re.search(r"GenerateVideo OK in \S+ \(queue \d\S*, prepare \d\S*, pipeline \d\S*, "
                     r"write \d\S*\) seed=3 size=64x64 steps=2 batch=1 "
                     r"pipeline=TextToVideoSDPipeline", server.log())

    after = client(server.addr, "status")
    state = json.loads(after.stdout)
    assert state["state"] == "READY" and state["memory"]["total"] > 0
    freed = client(server.addr, "free")
    assert (freed.returncode, freed.stdout) == (0, "model freed\n")

"""A newcomer's first ten minutes, end to end: the README's offline demo and quick start
(their printed output has the README's shape), the ``diffusers-client`` command a newcomer
types from any folder, and the messages met when something is missing: no Hub, a port in
use, no server.

The Hub here is an address that cannot answer (``http://hub.invalid``, a name no resolver
knows), so nothing leaves the machine.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import PNG_MAGIC, REPO_ROOT, free_port, start_backend
from PIL import Image

CLIENT = Path(sys.executable).with_name("diffusers-client")  # what `make install` puts there
README = REPO_ROOT / "README.md"
NO_HUB = "http://hub.invalid"
HOME = "/home/me/diffusers-grpc"  # the README's example folder
MODEL = "stabilityai/sd-turbo"  # the README's example model


def readme_block(section: str) -> list[str]:
    """The lines of the first ```text block in the README section titled ``section``."""
    text = README.read_text()
    body = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return body.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def shape(line: str, literal: dict[str, str]) -> re.Pattern[str]:
    """A README output line as a pattern: each example in ``literal`` (a path, the model)
    replaced by what this run has, every other number free, the rest exact."""
    split = re.split("(" + "|".join(map(re.escape, literal)) + ")", line)
    return re.compile("".join(
        re.escape(literal[part]) if i % 2 else re.sub(r"\d+", r"\\d+", re.escape(part))
        for i, part in enumerate(split)) + "$")


def matches(expected: list[str], got: str, literal: dict[str, str]) -> bool:
    lines = got.strip().splitlines()
    return len(lines) == len(expected) and all(
        shape(e, literal).match(g) for e, g in zip(expected, lines, strict=True))


def run(*argv: str, cwd: Path, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = start_backend(tmp_path_factory.mktemp("newcomer"))
    yield backend
    backend.stop()


# -- the README's offline demo and quick start -----------------------------------------------
def test_demo_draws_a_picture_offline_as_the_readme_shows(tmp_path):
    """``make demo`` runs scripts/demo.py; here from a folder of its own, with no Hub."""
    started = time.monotonic()
    result = run(sys.executable, REPO_ROOT / "scripts/demo.py", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    picture = tmp_path / "demo.png"
    assert picture.read_bytes()[:8] == PNG_MAGIC
    assert Image.open(picture).size == (128, 128)
    assert (tmp_path / "models/tiny-sd/model_index.json").is_file()
    expected = readme_block("Offline: `make demo`")
    assert matches(expected, result.stdout, {HOME: str(tmp_path)}), (
        f"README shows:\n{chr(10).join(expected)}\n--- got ---\n{result.stdout}")
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 600
    # a second run reuses the model it built
    again = run(sys.executable, REPO_ROOT / "scripts/demo.py", cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "tiny model with random weights" in again.stdout


def test_quick_start_commands_print_what_the_readme_shows(server, tiny_sd, tmp_path):
    """The README's load and image lines, run with the installed command from another
    folder, with the tiny model in place of the Hub model."""
    quick = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash\n", 2)[2].split("```", 1)[0]
    commands = [shlex.split(line.split("  #", 1)[0]) for line in block.splitlines()]
    assert [c[1] for c in commands] == ["load", "image"]
    outputs = []
    for argv in commands:
        argv = [str(tiny_sd) if a == MODEL else a for a in argv[1:]]
        result = run(CLIENT, "--addr", server.addr, "-q", *argv, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    expected = readme_block("Quick start: a picture in three commands")
    assert matches(expected, "".join(outputs), {MODEL: str(tiny_sd), HOME: str(tmp_path)}), (
        f"README shows:\n{chr(10).join(expected)}\n--- got ---\n{''.join(outputs)}")
    assert Image.open(tmp_path / "fox.png").format == "PNG"


# -- the client a newcomer types -------------------------------------------------------------
def test_the_client_command_works_from_any_folder(server, tmp_path):
    result = run(CLIENT, "--addr", server.addr, "health", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "OK\n")


@pytest.mark.parametrize("argv", [["-q", "--addr", "ADDR", "health"],
                                  ["health", "--addr", "ADDR", "-q"],
                                  ["--addr", "ADDR", "health", "--quiet", "--timeout", "5"]])
def test_options_go_before_or_after_the_command(server, tmp_path, argv):
    result = run(CLIENT, *[server.addr if a == "ADDR" else a for a in argv], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")


def test_a_reader_that_goes_away_ends_the_client_without_a_traceback(server, tmp_path):
    """``diffusers-client status | head -1``: the reader has left before the reply comes."""
    proc = subprocess.Popen([CLIENT, "--addr", server.addr, "status"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the client writes anything
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 141, stderr  # 128 + SIGPIPE, as a shell reports it
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr


def test_no_server_is_said_as_such(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    waited = run(CLIENT, "--addr", addr, "--wait", "--timeout", "2", "-q", "health",
                 cwd=tmp_path)
    assert waited.returncode == 14  # UNAVAILABLE
    assert waited.stderr == f"error: UNAVAILABLE: no server answered at {addr} within 2 s\n"
    at_once = run(CLIENT, "status", "--addr", addr, cwd=tmp_path)
    assert at_once.returncode == 14
    assert at_once.stderr.startswith(f"error: UNAVAILABLE: no server answered at {addr};")
    assert "--wait" in at_once.stderr


def test_image_on_a_video_model_says_it_wrote_a_video(server, tmp_path):
    from tiny_video_models import tiny_text_to_video_path

    loaded = run(CLIENT, "--addr", server.addr, "-q", "load", tiny_text_to_video_path(),
                 cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    try:
        result = run(CLIENT, "--addr", server.addr, "-q", "image", "a cat", "-o", "clip.png",
                     "--width", "32", "--height", "32", "--steps", "2", cwd=tmp_path)
    finally:
        run(CLIENT, "--addr", server.addr, "free", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "clip.png").exists()
    video = tmp_path / "clip.mp4"
    assert video.read_bytes()[4:8] == b"ftyp"  # an MP4, under an MP4's name
    assert result.stdout.startswith(f"video written to {video};")
    assert "renamed clip.png to clip.mp4" in result.stdout


# -- the messages met when something is missing ----------------------------------------------
@pytest.fixture(scope="module")
def no_hub_server(tmp_path_factory, tiny_sd):
    """A server that may use the Hub (HF_HUB_OFFLINE unset) but cannot reach it, with the
    tiny model in its Hugging Face cache as ``tiny/cached-sd``."""
    home = tmp_path_factory.mktemp("hf")
    repo = home / "hub" / "models--tiny--cached-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_sd, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    backend = start_backend(tmp_path_factory.mktemp("no-hub"), env={
        "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_HOME": str(home),
        "HF_ENDPOINT": NO_HUB})
    backend.load("/no/such/folder")  # waits for the torch import, so that loads time alone
    yield backend
    backend.stop()


def _load(backend, model: str):
    started = time.monotonic()
    offset = len(backend.log())
    result = backend.load(model)
    return result, time.monotonic() - started, backend.log()[offset:]


def test_an_unreachable_hub_fails_a_hub_id_at_once_in_one_line(no_hub_server):
    result, seconds, log = _load(no_hub_server, "nobody/no-such-model")
    assert not result.success
    assert seconds < 8, f"{seconds:.1f} s: the load waited for Hub retries"
    assert "\n" not in result.message
    assert "the Hub cannot be reached (hub.invalid:" in result.message
    assert result.message.endswith("or set HF_HUB_OFFLINE=1 to use the cache only")
    assert "Traceback" not in log and "Retrying" not in log
    assert not re.search(r"^\S+ \S+ ERROR ", log, re.M), log


def test_a_cached_model_loads_when_the_hub_is_unreachable(no_hub_server):
    result, seconds, log = _load(no_hub_server, "tiny/cached-sd")
    assert result.success, result.message
    assert "as StableDiffusionPipeline" in result.message
    assert "Retrying" not in log
    assert seconds < 60


def test_a_single_file_without_config_says_to_add_one(no_hub_server):
    from tiny_models import tiny_sd_single_file

    result, seconds, log = _load(no_hub_server, str(tiny_sd_single_file()))
    assert not result.success
    assert seconds < 30, f"{seconds:.1f} s: the load waited for Hub retries"
    assert "add the option config:" in result.message
    assert "the Hugging Face Hub cannot be reached (hub.invalid:" in result.message
    assert "Traceback" not in log and "Retrying" not in log


def test_a_port_in_use_names_the_fix(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        result = run(sys.executable, "-m", "diffusers_backend", "--addr", addr,
                     cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 1
    assert (f"diffusers backend: cannot listen on {addr}: the port is already in use"
            in result.stderr)
    assert "--addr HOST:PORT" in result.stderr and "make run ADDR=" in result.stderr
    assert "GRPC_VERBOSITY" not in result.stderr

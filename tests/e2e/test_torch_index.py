"""scripts/torch_index.py, run as ``make install`` runs it: the CPU build asks PyTorch's CPU
index only when it answers (a loopback HTTP server stands in for the index; a closed port for
one that does not answer), a folder on disk is taken as is, and no index asks nothing.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCH_INDEX_SCRIPT = REPO_ROOT / "scripts" / "torch_index.py"


def torch_index(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TORCH_INDEX_SCRIPT), url], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture()
def index_server():
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html><a href='torch/'>torch</a></html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    server.shutdown()


def test_an_index_that_answers_is_added(index_server):
    result = torch_index(index_server)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"--extra-index-url {index_server}\n", "")


def test_an_index_folder_on_disk_is_added(tmp_path):
    result = torch_index(tmp_path.as_uri())
    assert result.stdout == f"--extra-index-url {tmp_path.as_uri()}\n"


def test_an_index_that_does_not_answer_is_left_out_with_a_note():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/whl/cpu"
    started = time.monotonic()
    result = torch_index(url)
    assert time.monotonic() - started < 30
    assert (result.returncode, result.stdout) == (0, "")
    assert f"torch index {url} not reachable" in result.stderr
    assert "TORCH_INDEX" in result.stderr


def test_no_index_asks_nothing():
    assert (torch_index("").stdout, torch_index("").stderr) == ("", "")

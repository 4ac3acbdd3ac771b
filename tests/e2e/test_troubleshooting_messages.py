"""The messages docs/troubleshooting.md quotes are the ones a user really sees.

Each section's ```text block is compared with what the code prints for the same situation
(a closed port for the client, a held port for the server), with the doc's address."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from diffusers_backend.serving import listen
from diffusers_backend.serving.client import main as client_main

DOC = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
DOC_ADDR = "127.0.0.1:50051"


def _quoted(heading: str) -> str:
    """The first ```text block under ``## heading``."""
    section = DOC.split(f"## {heading}\n", 1)[1]
    return re.search(r"```text\n(.*?)\n```", section, flags=re.S).group(1)


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_no_server_message_is_the_clients(capsys):
    addr = _closed_port()
    assert client_main(["--addr", addr, "health"]) != 0
    said = capsys.readouterr().err.strip().splitlines()[-1].replace(addr, DOC_ADDR)
    assert said == _quoted("No server answered")


def test_port_in_use_message_is_the_servers():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        addr = f"127.0.0.1:{holder.getsockname()[1]}"
        said = "diffusers backend: " + listen.cannot_listen_message(addr, listen.bind_problem(addr))
    assert said.replace(addr, DOC_ADDR) == _quoted("Port already in use")

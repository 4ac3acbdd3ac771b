"""docs/observability.md's grpcurl command for ``diffusers.v1.Progress/Watch``, run verbatim
against a live server with the tiny SD model loaded, its output compared (the helpers and
placeholders of ``test_grpcurl``)."""

from __future__ import annotations

from harness import start_backend
from test_grpcurl import (
    PLACEHOLDER_ADDR,
    PLACEHOLDER_OUT,
    _env,
    grpcurl_dir,
    readme_blocks,
    run_block,
)


def test_watch_command_follows_one_picture(tiny_sd, tmp_path):
    binary_dir = grpcurl_dir()
    steps = readme_blocks()["progress"]
    assert "diffusers.v1.Progress/Watch" in steps[0][0]
    server = start_backend(tmp_path)
    try:
        assert server.load(tiny_sd).success
        run_block(steps, {PLACEHOLDER_ADDR: server.addr, PLACEHOLDER_OUT: f"{tmp_path}/"},
                  _env(binary_dir))
    finally:
        server.stop()
    assert (tmp_path / "watched.png").stat().st_size > 0

"""The request's own knobs win over load-time defaults; CFGScale applies to every call."""

from __future__ import annotations

import grpc
import pytest
from features_support import load_ok, mean_diff, pixels, rpc_error, same

pytestmark = pytest.mark.usefixtures("free_backend_after")


def test_cfg_scale_from_load_model_applies(backend, tiny_sd, tmp_path):
    for cfg in (1.0, 7.0):
        load_ok(backend, tiny_sd, CFGScale=cfg)
        backend.image(tmp_path / f"cfg{cfg}.png", seed=2)
    assert mean_diff(tmp_path / "cfg1.0.png", tmp_path / "cfg7.0.png") > 0.5


def test_guidance_scale_option_overrides_cfg_scale(backend, tiny_sd, tmp_path):
    """cfg_scale 0 means "unset" on the wire (default 7); turbo models that need guidance
    off set the option guidance_scale:0, which wins over CFGScale."""
    load_ok(backend, tiny_sd, Options=["guidance_scale:0"], CFGScale=9)
    backend.image(tmp_path / "off-9.png", seed=2)
    load_ok(backend, tiny_sd, Options=["guidance_scale:0"], CFGScale=3)
    backend.image(tmp_path / "off-3.png", seed=2)
    load_ok(backend, tiny_sd, CFGScale=9)
    backend.image(tmp_path / "cfg9.png", seed=2)
    assert same(tmp_path / "off-9.png", tmp_path / "off-3.png")
    assert mean_diff(tmp_path / "off-9.png", tmp_path / "cfg9.png") > 0.5


def test_request_steps_and_size_win_over_option_defaults(backend, tiny_sd, tmp_path):
    load_ok(backend, tiny_sd, Options=["num_inference_steps:1", "width:32", "height:32"])
    reply = backend.image(tmp_path / "defaults.png", step=0, width=0, height=0, seed=2)
    assert "steps=1" in reply.message
    assert pixels(tmp_path / "defaults.png").shape == (32, 32, 3)
    reply = backend.image(tmp_path / "request.png", step=2, width=64, height=48, seed=2)
    assert "steps=2" in reply.message
    assert pixels(tmp_path / "request.png").shape == (48, 64, 3)


def test_model_seed_never_pins_unseeded_requests(backend, tiny_sd, tmp_path):
    """LocalAI sends ModelOptions.Seed = rand.Int32() once per load: using it as the default
    would make every unseeded image the same. Seeds <= 0 draw a fresh one per image."""
    load_ok(backend, tiny_sd, Seed=5)
    first = backend.image(tmp_path / "a.png", seed=0)
    second = backend.image(tmp_path / "b.png", seed=-1)
    assert "seed=5;" not in first.message and "seed=5;" not in second.message
    assert not same(tmp_path / "a.png", tmp_path / "b.png")
    own = backend.image(tmp_path / "c.png", seed=7)
    again = backend.image(tmp_path / "d.png", seed=7)
    assert "seed=7;" in again.message
    assert "seed=7;" in own.message
    assert same(tmp_path / "c.png", tmp_path / "d.png")


def test_size_option_is_held_to_the_pixel_limit(backend, tiny_sd, tmp_path):
    load_ok(backend, tiny_sd, Options=["width:100000", "height:100000"])
    error = rpc_error(lambda: backend.image(tmp_path / "x.png", width=0, height=0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in error.details()


def test_threads_sets_torch_cpu_threads(tmp_path, tiny_sd):
    """Threads changes the whole process's torch thread count, so it gets its own server."""
    from harness import start_backend

    server = start_backend(tmp_path)
    try:
        load_ok(server, tiny_sd, Threads=2)  # the suite's processes start with one
        assert "2 CPU threads" in server.log()
        assert server.image(tmp_path / "two-threads.png", seed=2).success
    finally:
        server.stop()

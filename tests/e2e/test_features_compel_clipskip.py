"""Compel prompt weighting (env COMPEL=1) and CLIP skip (CLIPSkip at load and per request,
honoured while env CLIPSKIP=1, the default).

Two servers: the session's shared one (COMPEL off, CLIPSKIP on) and one of this module's
own with COMPEL=1 and CLIPSKIP=0. The tiny SD text encoder has 2 layers, so CLIP skip 1 and
2 are valid and 3 is not.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from features_support import free, load_ok, mean_diff, pixels, rpc_error, same
from harness import start_backend


@pytest.fixture(scope="module")
def plain(backend, tiny_sd):
    load_ok(backend, tiny_sd)
    yield backend
    free(backend)


@pytest.fixture(scope="module")
def compel_server(tmp_path_factory, tiny_sd):
    server = start_backend(tmp_path_factory.mktemp("compel"),
                           env={"COMPEL": "1", "CLIPSKIP": "0"})
    load_ok(server, tiny_sd)
    yield server
    server.stop()


def test_compel_weighting_changes_the_image(compel_server, tmp_path):
    compel_server.image(tmp_path / "plain.png", positive_prompt="a red cube", seed=6)
    compel_server.image(tmp_path / "weighted.png", positive_prompt="a (red)++ cube", seed=6)
    compel_server.image(tmp_path / "weighted2.png", positive_prompt="a (red)++ cube", seed=6)
    assert same(tmp_path / "weighted.png", tmp_path / "weighted2.png")
    assert mean_diff(tmp_path / "plain.png", tmp_path / "weighted.png") > 0.05


def test_compel_weights_the_negative_prompt_too(compel_server, tmp_path):
    compel_server.image(tmp_path / "neg.png", negative_prompt="blue", seed=6)
    compel_server.image(tmp_path / "negw.png", negative_prompt="(blue)++", seed=6)
    assert mean_diff(tmp_path / "neg.png", tmp_path / "negw.png") > 0.05


def test_unweighted_prompt_gives_the_same_image_with_or_without_compel(
        compel_server, plain, tmp_path):
    compel_server.image(tmp_path / "compel.png", negative_prompt="blue", seed=6)
    plain.image(tmp_path / "plain.png", negative_prompt="blue", seed=6)
    assert np.abs(pixels(tmp_path / "compel.png") - pixels(tmp_path / "plain.png")).max() <= 1


def test_without_compel_the_syntax_is_plain_text(compel_server, plain, tmp_path):
    """COMPEL off: `a (red)++ cube` goes to the pipeline as text, unlike the weighted one."""
    compel_server.image(tmp_path / "compel.png", positive_prompt="a (red)++ cube", seed=6)
    plain.image(tmp_path / "plain.png", positive_prompt="a (red)++ cube", seed=6)
    assert mean_diff(tmp_path / "compel.png", tmp_path / "plain.png") > 0.05


def test_clip_skip_per_request_changes_the_image(plain, tmp_path):
    plain.image(tmp_path / "none.png", seed=6)
    plain.image(tmp_path / "skip1.png", seed=6, CLIPSkip=1)
    plain.image(tmp_path / "skip2.png", seed=6, CLIPSkip=2)
    assert mean_diff(tmp_path / "none.png", tmp_path / "skip1.png") > 0.5
    assert mean_diff(tmp_path / "skip1.png", tmp_path / "skip2.png") > 0.5


def test_clip_skip_from_load_model_and_the_request_wins(plain, tiny_sd, tmp_path):
    plain.image(tmp_path / "req1.png", seed=6, CLIPSkip=1)
    plain.image(tmp_path / "req2.png", seed=6, CLIPSkip=2)
    try:
        load_ok(plain, tiny_sd, CLIPSkip=2)
        plain.image(tmp_path / "load2.png", seed=6)
        plain.image(tmp_path / "load2-req1.png", seed=6, CLIPSkip=1)
    finally:
        load_ok(plain, tiny_sd)  # the module's other tests expect no load-time CLIP skip
    assert same(tmp_path / "load2.png", tmp_path / "req2.png")
    assert same(tmp_path / "load2-req1.png", tmp_path / "req1.png")


def test_clip_skip_too_deep_is_invalid_argument(plain, tmp_path):
    error = rpc_error(lambda: plain.image(tmp_path / "x.png", seed=6, CLIPSkip=3))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "clip_skip" in error.details()


def test_clipskip_0_env_makes_clip_skip_a_no_op(compel_server, tiny_sd, tmp_path):
    compel_server.image(tmp_path / "none.png", seed=6)
    compel_server.image(tmp_path / "skip.png", seed=6, CLIPSkip=1)
    assert same(tmp_path / "none.png", tmp_path / "skip.png")
    load_ok(compel_server, tiny_sd, CLIPSkip=2)
    compel_server.image(tmp_path / "load-skip.png", seed=6)
    assert same(tmp_path / "none.png", tmp_path / "load-skip.png")

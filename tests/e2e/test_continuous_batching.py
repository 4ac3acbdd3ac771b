"""Step-level (continuous) batching over gRPC on the tiny SD pipeline: a short request that
arrives while a long one is denoising joins it between steps and finishes first; every
picture equals the same request served alone by a server without step-level batching."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from harness import pixels, start_backend, wait_for_log

LONG_STEPS, SHORT_STEPS = 40, 3
_LINE = re.compile(r"GenerateImage OK in .*? seed=(\d+) .*? steps=(\d+) batch=(\d+) "
                   r"pipeline=\S+ shared_steps=(\d+)")


@pytest.fixture(scope="module", params=["1", "auto"])
def stepping_server(request, tmp_path_factory, tiny_sd):
    """`1` and `auto` (the default) both serve step by step; both are checked so a default
    that stops doing so fails here."""
    server = start_backend(tmp_path_factory.mktemp("stepping"),
                           env={"PYTHON_GRPC_MAX_WORKERS": "4", "DIFFUSERS_BATCH_WINDOW_MS": "0",
                                "DIFFUSERS_LOG_LEVEL": "DEBUG",
                                "DIFFUSERS_STEP_BATCHING": request.param})
    assert server.load(tiny_sd).success
    yield server
    server.stop()


@pytest.fixture(scope="module")
def request_level_server(tmp_path_factory, tiny_sd):
    """The reference: each request served alone by the pipeline's own call."""
    server = start_backend(tmp_path_factory.mktemp("alone"),
                           env={"DIFFUSERS_STEP_BATCHING": "0", "DIFFUSERS_MAX_BATCH": "1"})
    assert server.load(tiny_sd).success
    yield server
    server.stop()


def _shared(log: str) -> dict[int, tuple[int, int, int]]:
    """{seed: (steps, largest batch, shared steps)} from the request log lines."""
    return {int(seed): (int(steps), int(batch), int(shared))
            for seed, steps, batch, shared in _LINE.findall(log)}


def test_a_short_request_joining_a_long_one_finishes_first(stepping_server,
                                                          request_level_server, tmp_path):
    offset = len(stepping_server.log())
    finished: list[str] = []

    def serve(name: str, seed: int, steps: int) -> None:
        stepping_server.image(tmp_path / f"{name}.png", seed=seed, step=steps,
                              positive_prompt=f"a {name} cube")
        finished.append(name)

    long = threading.Thread(target=serve, args=("long", 11, LONG_STEPS))
    long.start()
    # The long request is running once the engine has admitted it into its loop.
    wait_for_log(stepping_server, "denoising loop admitted seed=11", since=offset, within=120)
    short = threading.Thread(target=serve, args=("short", 22, SHORT_STEPS))
    short.start()
    short.join(300)
    long.join(300)
    assert finished == ["short", "long"]
    lines = _shared(stepping_server.log()[offset:])
    assert lines[22] == (SHORT_STEPS, 2, SHORT_STEPS)  # every step of it shared with the long
    assert lines[11][0] == LONG_STEPS and lines[11][2] == SHORT_STEPS
    for name, seed, steps in (("long", 11, LONG_STEPS), ("short", 22, SHORT_STEPS)):
        alone = tmp_path / f"{name}-alone.png"
        request_level_server.image(alone, seed=seed, step=steps, positive_prompt=f"a {name} cube")
        diff = np.abs(pixels(tmp_path / f"{name}.png") - pixels(alone))
        assert diff.max() <= 2, f"{name} differs by {diff.max()} from served alone"


def test_requests_of_different_step_counts_share_steps_and_keep_their_pictures(
        stepping_server, request_level_server, tmp_path):
    offset = len(stepping_server.log())
    steps = {31: 4, 32: 9, 33: 6}
    threads = [threading.Thread(target=stepping_server.image,
                                args=(tmp_path / f"{seed}.png",),
                                kwargs={"seed": seed, "step": n, "positive_prompt": f"cube {seed}"})
               for seed, n in steps.items()]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # order only; joining later is what the test is about
    for thread in threads:
        thread.join(300)
    lines = _shared(stepping_server.log()[offset:])
    assert set(lines) == set(steps)
    assert sum(shared for _, _, shared in lines.values()) > 0, "no step was shared"
    for seed, n in steps.items():
        alone = tmp_path / f"{seed}-alone.png"
        request_level_server.image(alone, seed=seed, step=n, positive_prompt=f"cube {seed}")
        diff = np.abs(pixels(tmp_path / f"{seed}.png") - pixels(alone))
        assert diff.max() <= 2, f"seed {seed} differs by {diff.max()} from served alone"

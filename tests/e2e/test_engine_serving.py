"""The engine over gRPC on the tiny SD pipeline: simultaneous clients become one batch, each
image with its own seed; the speed options (compile, channels-last, fused QKV) load, warm up
inside LoadModel and keep the images. (PNG compression alone is tested in
tests/unit/test_media_files.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from features_support import load_ok, mean_diff, pixels, same
from harness import batch_of_each_seed, simultaneously, start_backend


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, tiny_sd):
    """Eight clients fill the batch limit, so their call starts once all are queued; the
    window (long, for a busy machine) holds only smaller bursts and lone requests."""
    server = start_backend(tmp_path_factory.mktemp("batching"),
                           env={"DIFFUSERS_BATCH_WINDOW_MS": "1000", "DIFFUSERS_MAX_BATCH": "8",
                                "PYTHON_GRPC_MAX_WORKERS": "8"})
    load_ok(server, tiny_sd)
    yield server
    server.stop()


def _assert_each_equals_its_lone_run(server, folder, seeds: dict[int, int]) -> None:
    """Serve each request again, alone, with the seed it was given; 1/255 rounding allowed
    (a batched matrix product may round differently)."""
    for index, seed in seeds.items():
        alone = folder / f"alone{index}.png"
        server.image(alone, seed=seed, positive_prompt=f"a cube number {index}")
        diff = np.abs(pixels(folder / f"{index}.png") - pixels(alone))
        assert diff.max() <= 2, f"client {index} (seed {seed}) differs by {diff.max()} batched"


def test_eight_simultaneous_clients_share_one_pipeline_call(batching_server, tmp_path):
    offset = len(batching_server.log())
    replies = simultaneously([
        lambda i=i: batching_server.image(tmp_path / f"{i}.png", seed=-1,
                                          positive_prompt=f"a cube number {i}")
        for i in range(8)])
    seeds = {i: int(reply.message.split("seed=")[1].split(";")[0])
             for i, reply in enumerate(replies)}
    assert len(set(seeds.values())) == 8  # each drew its own
    batches = batch_of_each_seed(batching_server.log()[offset:])
    assert [batches.get(seed) for seed in seeds.values()] == [8] * 8
    _assert_each_equals_its_lone_run(batching_server, tmp_path, seeds)


def test_a_batched_image_equals_the_same_request_alone(batching_server, tmp_path):
    """Batching changes nothing about an image but its company, whichever place in the
    batch a request takes: every member is compared."""
    seeds = {0: 77, 1: 1, 2: 2, 3: 3}
    offset = len(batching_server.log())
    simultaneously([lambda i=i: batching_server.image(tmp_path / f"{i}.png", seed=seeds[i],
                                                      positive_prompt=f"a cube number {i}")
                    for i in seeds])
    batches = batch_of_each_seed(batching_server.log()[offset:])
    assert [batches.get(seed) for seed in seeds.values()] == [4] * 4
    _assert_each_equals_its_lone_run(batching_server, tmp_path, seeds)


@pytest.mark.usefixtures("free_backend_after")
def test_compile_is_applied_and_warmed_up_inside_load_model(backend, tiny_sd, tmp_path):
    """torch.compile through the ``eager`` backend: the real wiring (module.compile, warm-up
    call in LoadModel) without minutes of code generation on a 2-core CPU."""
    load_ok(backend, tiny_sd)
    backend.image(tmp_path / "eager.png", seed=12)
    offset = len(backend.log())
    load_ok(backend, tiny_sd, Options=["compile:true", "compile_backend:eager"])
    log = backend.log()[offset:]
    assert "unet compiled (eager)" in log and "warmed up in" in log
    backend.image(tmp_path / "compiled.png", seed=12)
    assert same(tmp_path / "eager.png", tmp_path / "compiled.png")


@pytest.mark.usefixtures("free_backend_after")
def test_channels_last_and_fused_qkv_keep_the_image(backend, tiny_sd, tmp_path):
    load_ok(backend, tiny_sd)
    backend.image(tmp_path / "plain.png", seed=13)
    offset = len(backend.log())
    load_ok(backend, tiny_sd, Options=["channels_last:true", "fuse_qkv:true"])
    log = backend.log()[offset:]
    assert "channels-last" in log and "fused QKV" in log
    backend.image(tmp_path / "fast.png", seed=13)
    assert mean_diff(tmp_path / "plain.png", tmp_path / "fast.png") < 1.0


@pytest.mark.usefixtures("free_backend_after")
def test_an_unknown_compile_mode_fails_the_load_naming_it(backend, tiny_sd):
    result = backend.load(tiny_sd, Options=["compile:true", "compile_mode:turbo"])
    assert not result.success
    assert "compile_mode 'turbo'" in result.message and "reduce-overhead" in result.message


def test_profile_dir_writes_a_trace_per_pipeline_call(tmp_path, tiny_sd):
    """DIFFUSERS_PROFILE_DIR: a Chrome trace and an operator table for each call."""
    import json

    folder = tmp_path / "profiles"
    server = start_backend(tmp_path, env={"DIFFUSERS_PROFILE_DIR": str(folder)})
    try:
        load_ok(server, tiny_sd)
        server.image(tmp_path / "profiled.png", seed=3)
    finally:
        server.stop()
    traces = sorted(folder.glob("call-*.json"))
    assert len(traces) == 1
    assert json.loads(traces[0].read_text())["traceEvents"]
    table = traces[0].with_suffix(".txt").read_text()
    assert table.startswith("ImagePlan x1") and "aten::" in table

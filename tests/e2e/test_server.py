"""The foundation end to end: a real server subprocess driven through the generated stubs."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from harness import (
    PNG_MAGIC,
    REPO_ROOT,
    backend_pb2,
    free_port,
    pixels,
    start_backend,
    wait_for_log,
)
from PIL import Image


def test_health_answers_before_torch_and_diffusers_are_imported(tmp_path):
    """The port opens first and torch and diffusers import in the background (seconds), so
    a host's Health poll succeeds at once. How soon depends on the machine (printed); the
    order does not: Health answers while the log does not yet say the imports are done."""
    started = time.monotonic()
    server = start_backend(tmp_path)  # returns once Health has answered OK
    try:
        elapsed = time.monotonic() - started
        assert "torch and diffusers imported" not in server.log()
        wait_for_log(server, "torch and diffusers imported", within=300)  # they do finish
        print(f"\nHealth answered {elapsed:.2f}s after the process started")
    finally:
        server.stop()


def test_status_goes_uninitialized_ready_uninitialized(fresh_backend, tiny_sd):
    status = fresh_backend.status()
    assert status.state == backend_pb2.StatusResponse.UNINITIALIZED
    assert status.memory.total > 10_000_000  # process RSS in bytes
    assert fresh_backend.load(tiny_sd).success
    assert fresh_backend.status().state == backend_pb2.StatusResponse.READY
    free = fresh_backend.stub.Free(backend_pb2.HealthMessage(), timeout=30)
    assert free.success
    assert fresh_backend.status().state == backend_pb2.StatusResponse.UNINITIALIZED


def test_failed_first_load_reports_error_state(fresh_backend, tmp_path):
    result = fresh_backend.load(tmp_path / "nope")
    assert not result.success
    assert fresh_backend.status().state == backend_pb2.StatusResponse.ERROR


def test_load_missing_path_names_it(backend, tmp_path):
    missing = tmp_path / "models" / "not-here.safetensors"
    result = backend.load(str(missing))
    assert not result.success
    assert "not-here.safetensors" in result.message


def test_load_with_bad_pipeline_type_suggests_a_close_name(backend, tiny_sd):
    result = backend.load(tiny_sd, PipelineType="StableDifusionPipeline")
    assert not result.success
    assert "StableDifusionPipeline" in result.message
    assert "StableDiffusionPipeline" in result.message


def test_load_unknown_torch_dtype_names_the_value(backend, tiny_sd):
    """Ignored with a warning naming it and the dtype used, as LocalAI's backend ignores it."""
    result = backend.load(tiny_sd, Options=["torch_dtype:fp12"])
    assert result.success, result.message
    assert "torch_dtype 'fp12'" in result.message and "float32" in result.message


def test_load_uses_modelfile_when_it_exists(backend, tiny_sd):
    result = backend.stub.LoadModel(
        backend_pb2.ModelOptions(Model=tiny_sd.name, ModelPath=str(tiny_sd.parent),
                                 ModelFile=str(tiny_sd)),
        timeout=120,
    )
    assert result.success, result.message
    assert "StableDiffusionPipeline" in result.message
    backend.stub.Free(backend_pb2.HealthMessage(), timeout=30)


def test_txt2img_writes_png_of_requested_size(loaded_backend, tmp_path):
    dst = tmp_path / "out.png"
    result = loaded_backend.image(dst, seed=7, width=64, height=48)
    assert result.success
    assert dst.read_bytes()[:8] == PNG_MAGIC
    assert Image.open(dst).size == (64, 48)
    assert "seed=7" in result.message


def test_same_seed_same_pixels_other_seed_differs(loaded_backend, tmp_path):
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    loaded_backend.image(a, seed=42)
    loaded_backend.image(b, seed=42)
    loaded_backend.image(c, seed=43)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_random_seed_is_reported_and_reproduces(loaded_backend, tmp_path):
    first = loaded_backend.image(tmp_path / "r1.png", seed=0)
    seed = int(first.message.split("seed=")[1].split(";")[0])
    assert seed > 0
    loaded_backend.image(tmp_path / "r2.png", seed=seed)
    assert np.array_equal(pixels(tmp_path / "r1.png"), pixels(tmp_path / "r2.png"))


def test_dst_ending_tmp_still_gets_a_png(loaded_backend, tmp_path):
    dst = tmp_path / "upload-123.tmp"
    loaded_backend.image(dst, seed=1)
    assert dst.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["upload-123.tmp"]


def _source_image(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_img2img_from_src_differs_from_txt2img(loaded_backend, tmp_path):
    src = _source_image(tmp_path / "src.png")
    loaded_backend.image(tmp_path / "t2i.png", seed=5)
    result = loaded_backend.image(tmp_path / "i2i.png", seed=5, src=str(src))
    assert result.success
    assert Image.open(tmp_path / "i2i.png").size == (64, 64)
    assert not np.array_equal(pixels(tmp_path / "t2i.png"), pixels(tmp_path / "i2i.png"))


def test_img2img_from_ref_images_matches_src(loaded_backend, tmp_path):
    src = _source_image(tmp_path / "src.png")
    loaded_backend.image(tmp_path / "a.png", seed=9, src=str(src))
    loaded_backend.image(tmp_path / "b.png", seed=9, ref_images=[str(src)])
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))


def test_generate_before_load_is_failed_precondition(backend, tmp_path):
    with pytest.raises(grpc.RpcError) as err:
        backend.image(tmp_path / "x.png")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LoadModel" in err.value.details()
    assert not (tmp_path / "x.png").exists()


def test_generate_after_free_is_failed_precondition(fresh_backend, tiny_sd, tmp_path):
    assert fresh_backend.load(tiny_sd).success
    fresh_backend.image(tmp_path / "ok.png")
    fresh_backend.stub.Free(backend_pb2.HealthMessage(), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        fresh_backend.image(tmp_path / "x.png")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_failed_load_keeps_previous_model(fresh_backend, tiny_sd, tmp_path):
    assert fresh_backend.load(tiny_sd).success
    assert not fresh_backend.load(tmp_path / "missing").success
    assert fresh_backend.status().state == backend_pb2.StatusResponse.READY
    assert fresh_backend.image(tmp_path / "still.png").success


def test_img2img_pipeline_type_without_image_is_invalid_argument(fresh_backend, tiny_sd, tmp_path):
    result = fresh_backend.load(tiny_sd, PipelineType="StableDiffusionImg2ImgPipeline")
    assert result.success, result.message
    with pytest.raises(grpc.RpcError) as err:
        fresh_backend.image(tmp_path / "x.png")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input image" in err.value.details()


@pytest.mark.parametrize("name,value", [("COMPEL", "maybe"), ("PYTHON_GRPC_MAX_WORKERS", "four"),
                                        ("FRAMES", "-3")])
def test_malformed_env_var_stops_start_up_naming_it(name, value):
    proc = subprocess.run(
        [sys.executable, "-m", "diffusers_backend", "--addr", f"127.0.0.1:{free_port()}"],
        cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", name: value},
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert name in proc.stderr


def test_img2img_output_takes_the_requested_size(loaded_backend, tmp_path):
    src = _source_image(tmp_path / "src.png")  # 64x64
    result = loaded_backend.image(tmp_path / "wide.png", seed=3, src=str(src), width=64,
                                  height=32)
    assert result.success
    assert Image.open(tmp_path / "wide.png").size == (64, 32)

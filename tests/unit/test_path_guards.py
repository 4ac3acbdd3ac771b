"""Path and weight guards, the in-process MP4 writer and the request limits (issue 16), in
process: no server needed for what these check."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from diffusers_backend import path_guard
from diffusers_backend.errors import InvalidArgument, LoadError, PermissionDenied
from diffusers_backend.loading import load_guard, load_plan, weight_guard
from diffusers_backend.media import files, inputs, video
from diffusers_backend.settings import Settings, SettingsError, load_settings


def _guard(spec) -> None:
    """LoadModel's resolve and guard stages, which run before anything is read."""
    load_guard.guard(load_plan.resolve(spec, Settings()))


def _finishes(call, seconds: float = 5.0):
    """Run ``call`` in a thread; fail (instead of hanging the suite) if it blocks."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture()
def confined_to(tmp_path):
    def confine(*roots: Path) -> None:
        path_guard.set_allowed_roots([str(r) for r in roots])

    yield confine
    path_guard.set_allowed_roots([])


# --------------------------------------------------------------------- blocking inputs


def test_opening_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match="FIFO"):
        _finishes(lambda: inputs.open_image(str(fifo), max_pixels=1 << 20))
    assert _finishes(lambda: inputs.is_inpaint_json(str(fifo))) is False
    with pytest.raises(InvalidArgument, match="FIFO"):
        _finishes(lambda: path_guard.open_file(str(fifo), "src"))


def test_os_errors_become_statuses_a_user_can_act_on(tmp_path):
    with pytest.raises(InvalidArgument, match="too long"):
        path_guard.check_file(str(tmp_path / ("a" * 300)), "src")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InvalidArgument, match="link loop"):
        path_guard.check_file(str(tmp_path / "a"), "src")
    with pytest.raises(InvalidArgument, match="too long"):
        files.check_output_path(str(tmp_path / ("b" * 300 + ".png")))


def test_confinement_answers_alike_for_existing_and_missing_files(tmp_path, confined_to):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "there.png").write_bytes(b"x")
    confined_to(inside)
    messages = []
    for name in ("there.png", "missing.png"):
        with pytest.raises(PermissionDenied, match="DIFFUSERS_ALLOWED_PATHS") as info:
            path_guard.check_file(str(outside / name), "src")
        messages.append(str(info.value).replace(name, "X"))
    assert messages[0] == messages[1]
    (inside / "link.png").symlink_to(outside / "there.png")
    with pytest.raises(PermissionDenied):
        path_guard.check_file(str(inside / "link.png"), "src")
    with pytest.raises(PermissionDenied):
        files.check_output_path(str(outside / "o.png"))
    files.check_output_path(str(inside / "o.png"))


# --------------------------------------------------------------------- outputs


def test_a_new_file_drops_setuid_bits(tmp_path):
    from PIL import Image

    dst = tmp_path / "o.png"
    dst.write_bytes(b"old")
    os.chmod(dst, 0o6750)
    files.write_png_atomic(Image.new("RGB", (8, 8)), str(dst))
    assert oct(os.stat(dst).st_mode & 0o7777) == oct(0o750)


def test_leftovers_are_removed_but_a_live_write_is_kept(tmp_path):
    stale = tmp_path / ".o.png.abcd1234.partial"
    stale.write_bytes(b"half")
    live = tmp_path / ".o.png.efgh5678.partial"
    live.write_bytes(b"in progress")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        removed = files.remove_leftovers(tmp_path, "o.png")
    finally:
        os.close(fd)
    assert removed == [stale.name]
    assert live.exists() and not stale.exists()


# --------------------------------------------------------------------- video


def test_videos_are_encoded_without_starting_a_process(tmp_path, monkeypatch):
    import av

    def no_process(*args, **kwargs):
        raise AssertionError("the MP4 writer started a process")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(os, "fork", no_process)
    frames = [np.full((33, 47, 3), i * 20, dtype=np.uint8) for i in range(5)]
    dst = tmp_path / "v.tmp"
    video.write_video_atomic(frames, str(dst), fps=8)
    with av.open(str(dst)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(video=0))
        assert stream.average_rate == 8
    assert len(decoded) == 5
    assert (decoded[0].width, decoded[0].height) == (48, 34)  # padded to even, not scaled


# --------------------------------------------------------------------- SAFETENSORS


def _safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    return path


def _pickle(path: Path) -> Path:
    import torch

    torch.save({"w": torch.zeros(2)}, path)
    return path


def test_weight_files_are_judged_by_target_and_content(tmp_path):
    good = _safetensors(tmp_path / "good.safetensors")
    weight_guard.check_weight_file(str(good), "model", True)
    link = tmp_path / "model.safetensors"
    link.symlink_to(_pickle(tmp_path / "evil.ckpt"))
    with pytest.raises(LoadError, match="SAFETENSORS"):
        weight_guard.check_weight_file(str(link), "model", True)
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes((tmp_path / "evil.ckpt").read_bytes())
    with pytest.raises(LoadError, match="content is not safetensors"):
        weight_guard.check_weight_file(str(renamed), "model", True)
    weight_guard.check_weight_file(str(renamed), "model", False)  # SAFETENSORS=0 allows


def test_a_folder_with_only_pickle_weights_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "text_encoder").mkdir()
    _safetensors(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    _pickle(tmp_path / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(LoadError, match="text_encoder"):
        weight_guard.check_weight_folder(str(tmp_path), "model", True)
    _safetensors(tmp_path / "text_encoder" / "model.safetensors")
    weight_guard.check_weight_folder(str(tmp_path), "model", True)
    with pytest.raises(LoadError, match="use_safetensors"):
        weight_guard.refuse_pickle_kwargs({"use_safetensors": False}, True)


def test_a_fifo_in_a_model_folder_is_refused(tmp_path):
    os.mkfifo(tmp_path / "model_index.json")
    with pytest.raises(InvalidArgument, match="FIFO"):
        _finishes(lambda: weight_guard.check_weight_folder(str(tmp_path), "model", True))


# --------------------------------------------------------------------- limits, settings


def test_inpainting_json_above_the_cap_is_refused_unread(tmp_path):
    src = tmp_path / "big.json"
    src.write_text(json.dumps({"image": "A" * 5000}))
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="DIFFUSERS_MAX_INPAINT_JSON_BYTES"):
        inputs.load_inpaint_inputs(str(src), [], max_pixels=1 << 20, max_json_bytes=4096)
    assert time.perf_counter() - started < 1


def test_request_limits():
    import backend_pb2
    from diffusers_backend.serving.request_limits import check_request

    check_request(backend_pb2.GenerateImageRequest(positive_prompt="x" * 100), 100)
    with pytest.raises(InvalidArgument, match="DIFFUSERS_MAX_PROMPT_CHARS"):
        check_request(backend_pb2.GenerateImageRequest(positive_prompt="x" * 101), 100)
    with pytest.raises(InvalidArgument, match="src is 5000 characters"):
        check_request(backend_pb2.GenerateImageRequest(src="/" * 5000), 100)


def test_allowed_paths_setting(tmp_path):
    assert load_settings({}).allowed_paths == ()
    settings = load_settings({"DIFFUSERS_ALLOWED_PATHS": f"{tmp_path}:/models"})
    assert settings.allowed_paths == (str(tmp_path), "/models")
    with pytest.raises(SettingsError, match="absolute"):
        load_settings({"DIFFUSERS_ALLOWED_PATHS": "models"})


def test_os_errors_from_inside_a_library_are_not_internal():
    import errno

    import grpc

    from diffusers_backend.serving.status import status_for

    for number, code in ((errno.ENAMETOOLONG, grpc.StatusCode.INVALID_ARGUMENT),
                         (errno.ELOOP, grpc.StatusCode.INVALID_ARGUMENT),
                         (errno.EROFS, grpc.StatusCode.PERMISSION_DENIED),
                         (errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED)):
        error = OSError(number, os.strerror(number), "/models/" + "x" * 1000)
        got, message = status_for(error)
        assert got == code, (number, got, message)
        assert len(message) < 400
    assert status_for(OSError(errno.EIO, "I/O error"))[0] == grpc.StatusCode.INTERNAL


def test_a_fifo_config_option_is_refused(tmp_path):
    from diffusers_backend.loading.spec import LoadSpec

    os.mkfifo(tmp_path / "v1-inference.yaml")
    spec = LoadSpec(model="some/hub-id", model_path=str(tmp_path),
                    options={"original_config": "v1-inference.yaml"})
    with pytest.raises(InvalidArgument, match="FIFO"):
        _finishes(lambda: _guard(spec))


def test_a_fifo_lora_is_refused_before_the_model_loads(tmp_path):
    from diffusers_backend.loading.spec import LoadSpec

    os.mkfifo(tmp_path / "lora.safetensors")
    spec = LoadSpec(model="some/hub-id", model_path=str(tmp_path),
                    lora_adapter="lora.safetensors")
    with pytest.raises(InvalidArgument, match="LoRA is a FIFO"):
        _finishes(lambda: _guard(spec))

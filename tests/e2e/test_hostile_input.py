"""Hostile input and faults on real servers on loopback.

Paths that block on read (FIFOs, /dev/stdin) or break the OS's rules, SAFETENSORS through
links and options, amplification (huge prompts, JSON and messages), confinement to allowed
folders, a metrics port that cannot be exhausted, and leftovers of killed writes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from features_support import rpc_error, write_image
from harness import PNG_MAGIC, BackendProcess, backend_pb2, free_port, start_backend
from tiny_models import tiny_lora_path, tiny_pickle_checkpoint, tiny_sd_path
from tiny_video_models import tiny_text_to_video_path

QUICK_S = 10.0  # a refusal answers within this; a blocked thread would run into the deadline
TOKEN = "round2-Token-5c1e"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd) -> BackendProcess:
    """A server of this module's own, tiny SD loaded (a wedged thread stays here)."""
    proc = start_backend(tmp_path_factory.mktemp("hostile2"))
    result = proc.load(tiny_sd)
    assert result.success, result.message
    yield proc
    proc.stop()


def _quick_error(call) -> grpc.RpcError:
    started = time.monotonic()
    error = rpc_error(call)
    assert time.monotonic() - started < QUICK_S, f"took {time.monotonic() - started:.1f}s"
    return error


def _image(server: BackendProcess, dst: Path, **fields):
    fields.setdefault("positive_prompt", "a red cube")
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 1)
    request = backend_pb2.GenerateImageRequest(dst=str(dst), **fields)
    return server.stub.GenerateImage(request, timeout=QUICK_S * 3, metadata=server.metadata)


def _still_serves(server: BackendProcess, tmp_path: Path) -> None:
    assert server.stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
    dst = tmp_path / "after.png"
    _image(server, dst, seed=1)
    assert dst.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------- 1. blocking paths


@pytest.mark.parametrize("field", ["src", "ref_images", "mask_json_ref"])
def test_a_fifo_input_is_refused_at_once_and_the_server_keeps_serving(server, tmp_path, field):
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    fields: dict = {"src": str(fifo)}
    if field == "ref_images":
        fields = {"ref_images": [str(fifo)]}
    elif field == "mask_json_ref":
        picture = write_image(tmp_path / "pic.png")
        src = tmp_path / "inpaint.json"
        src.write_text("{}")
        fields = {"src": str(src), "ref_images": [str(picture), str(fifo)]}
    error = _quick_error(lambda: _image(server, tmp_path / "out.png", **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "fifo" in error.details().lower() or "regular file" in error.details()
    _still_serves(server, tmp_path)


def test_dev_stdin_as_src_is_refused_at_once(server, tmp_path):
    for path in ("/dev/stdin", "/proc/self/fd/0"):
        error = _quick_error(lambda p=path: _image(server, tmp_path / "o.png", src=p))
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.NOT_FOUND), error.details()
    _still_serves(server, tmp_path)


def test_a_fifo_lora_or_model_file_fails_the_load_at_once(tmp_path):
    """The first LoadModel also waits for torch to import; the second is timed alone and
    must fail before the model's weights load."""
    proc = start_backend(tmp_path)
    try:
        fifo = tmp_path / "lora.safetensors"
        os.mkfifo(fifo)
        for fields, bound in (({"ModelFile": str(fifo)}, 120), ({"LoraAdapter": str(fifo)}, 10)):
            model = str(fifo) if "ModelFile" in fields else str(tiny_sd_path())
            started = time.monotonic()
            result = proc.stub.LoadModel(backend_pb2.ModelOptions(Model=model, **fields),
                                         timeout=180)
            assert time.monotonic() - started < bound
            assert not result.success
            assert "fifo" in result.message.lower(), result.message
    finally:
        proc.stop()


# --------------------------------------------------------------------- 4. OS errors, NaN


def test_a_name_too_long_is_invalid_argument_not_internal(server, tmp_path):
    long_src = tmp_path / ("a" * 300 + ".png")
    error = _quick_error(lambda: _image(server, tmp_path / "o.png", src=str(long_src)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    error = _quick_error(lambda: _image(server, tmp_path / ("b" * 300 + ".png")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_a_symlink_loop_is_invalid_argument_not_internal(server, tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    error = _quick_error(lambda: _image(server, tmp_path / "o.png", src=str(tmp_path / "a.png")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "link" in error.details()


def test_nan_or_infinite_cfg_scale_is_refused(tmp_path):
    proc = start_backend(tmp_path)
    try:
        for bad in (math.nan, math.inf):
            result = proc.load(tiny_sd_path(), CFGScale=bad)
            assert not result.success and "cfg" in result.message.lower(), result.message
        assert proc.load(tiny_text_to_video_path()).success
        request = backend_pb2.GenerateVideoRequest(prompt="x", dst=str(tmp_path / "v.mp4"),
                                                   width=32, height=32, num_frames=2, step=1,
                                                   cfg_scale=math.nan)
        error = rpc_error(lambda: proc.stub.GenerateVideo(request, timeout=60))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert not (tmp_path / "v.mp4").exists()
    finally:
        proc.stop()


def test_garbage_request_bytes_are_invalid_argument(server):
    call = server.channel.unary_unary("/backend.Backend/GenerateImage")
    error = rpc_error(lambda: call(b"\xff\xff\xff\xff\x0f", timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "GenerateImageRequest" in error.details()


# --------------------------------------------------------------------- 5. SAFETENSORS


def _load_fails_naming_safetensors(proc: BackendProcess, model, **fields) -> None:
    result = proc.load(model, **fields)
    assert not result.success, "a pickle was loaded under SAFETENSORS=1"
    assert "SAFETENSORS" in result.message, result.message


def _bin_copy(folder: Path, source: Path) -> Path:
    """A copy of a diffusers folder with every .safetensors rewritten as a pickle .bin."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(source, folder)
    for file in list(folder.rglob("*.safetensors")):
        name = file.name.replace(".safetensors", ".bin").replace("model.bin", "model.bin")
        torch.save(load_file(file), file.with_name(name))
        file.unlink()
    return folder


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> BackendProcess:
    proc = start_backend(tmp_path_factory.mktemp("strict"))
    yield proc
    proc.stop()


def test_a_safetensors_link_to_a_pickle_is_refused(strict, tmp_path):
    link = tmp_path / "model.safetensors"
    link.symlink_to(tiny_pickle_checkpoint(tmp_path / "real"))
    _load_fails_naming_safetensors(strict, link, ModelFile=str(link),
                                   Options=[f"config:{tiny_sd_path()}"])


def test_a_pickle_renamed_safetensors_is_refused(strict, tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(tiny_pickle_checkpoint().read_bytes())
    _load_fails_naming_safetensors(strict, fake, ModelFile=str(fake),
                                   Options=[f"config:{tiny_sd_path()}"])


def test_use_safetensors_false_cannot_load_bin_folders(strict, tmp_path):
    folder = _bin_copy(tmp_path / "bin-sd", tiny_sd_path())
    _load_fails_naming_safetensors(strict, folder, Options=["use_safetensors:false"])
    _load_fails_naming_safetensors(strict, folder,
                                   EngineArgs=json.dumps({"use_safetensors": False}))


def test_a_bin_lora_is_refused(strict, tmp_path):
    import torch
    from safetensors.torch import load_file

    lora = tmp_path / "lora.bin"
    torch.save(load_file(tiny_lora_path()), lora)
    _load_fails_naming_safetensors(strict, tiny_sd_path(), LoraAdapter=str(lora))


def test_a_bin_clip_folder_and_a_ckpt_controlnet_are_refused(strict, tmp_path):
    clip = _bin_copy(tmp_path / "clip", tiny_sd_path() / "text_encoder")
    _load_fails_naming_safetensors(strict, tiny_sd_path(), CLIPModel=str(clip))
    ckpt = tiny_pickle_checkpoint(tmp_path / "cn")
    _load_fails_naming_safetensors(strict, tiny_sd_path(), ControlNet=str(ckpt))


# --------------------------------------------------------------------- 7. amplification


def test_a_huge_prompt_is_refused_with_the_limit(server, tmp_path):
    error = _quick_error(lambda: _image(server, tmp_path / "o.png",
                                        positive_prompt="red " * 300_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "DIFFUSERS_MAX_PROMPT_CHARS" in error.details()


def test_a_big_inpainting_json_is_refused_before_it_is_parsed(server, tmp_path):
    src = tmp_path / "inpaint.json"
    with open(src, "w") as fh:
        fh.write('{"image": "')
        fh.write("A" * (40 << 20))
        fh.write('", "mask_image": ""}')
    error = _quick_error(lambda: _image(server, tmp_path / "o.png", src=str(src)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "DIFFUSERS_MAX_INPAINT_JSON_BYTES" in error.details()


def test_a_huge_path_or_model_name_is_not_echoed(server, tmp_path):
    before = len(server.log())
    huge = "/x" * 500_000
    error = _quick_error(lambda: _image(server, tmp_path / "o.png", src=huge))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert len(error.details()) < 1000
    error = _quick_error(lambda: server.load("m" * 1_000_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert len(error.details()) < 1000
    assert len(server.log()) - before < 20_000


def test_a_message_above_the_receive_limit_is_refused(server):
    call = server.channel.unary_unary("/backend.Backend/GenerateImage")
    error = rpc_error(lambda: call(b"\x0a" + b"\x00" * (8 << 20), timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()


def test_unauthenticated_messages_are_not_parsed(tmp_path):
    proc = start_backend(tmp_path, env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN},
                         metadata=(("authorization", f"Bearer {TOKEN}"),))
    try:
        call = proc.channel.unary_unary("/backend.Backend/GenerateImage")
        error = rpc_error(lambda: call(b"\xff" * 1000, timeout=10))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    finally:
        proc.stop()


# --------------------------------------------------------------------- 8. confinement


@pytest.fixture(scope="module")
def confined(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    allowed = f"{root}:{tiny_sd_path()}"
    proc = start_backend(root, env={"DIFFUSERS_ALLOWED_PATHS": allowed})
    result = proc.load(tiny_sd_path())
    assert result.success, result.message
    yield proc, root, outside
    proc.stop()


def test_reads_outside_the_allowed_folders_are_denied_alike(confined):
    proc, root, outside = confined
    existing = write_image(outside / "there.png")
    errors = [rpc_error(lambda p=p: _image(proc, root / "o.png", src=str(p)))
              for p in (existing, outside / "missing.png")]
    assert [e.code() for e in errors] == [grpc.StatusCode.PERMISSION_DENIED] * 2
    assert errors[0].details().replace("there.png", "X") == \
        errors[1].details().replace("missing.png", "X")
    link = root / "link.png"
    link.symlink_to(existing)
    error = rpc_error(lambda: _image(proc, root / "o.png", src=str(link)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_writes_and_loads_outside_the_allowed_folders_are_denied(confined):
    proc, root, outside = confined
    error = rpc_error(lambda: _image(proc, outside / "o.png"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not (outside / "o.png").exists()
    result = proc.load(tiny_sd_path(), LoraAdapter=str(tiny_lora_path()))
    assert not result.success and "DIFFUSERS_ALLOWED_PATHS" in result.message
    dst = root / "ok.png"
    _image(proc, dst, src=str(write_image(root / "in.png")))
    assert dst.read_bytes()[:8] == PNG_MAGIC


def test_a_fifo_dst_is_refused_not_replaced(server, tmp_path):
    dst = tmp_path / "out.png"
    os.mkfifo(dst)
    error = _quick_error(lambda: _image(server, dst))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert stat.S_ISFIFO(os.lstat(dst).st_mode)


def test_a_new_output_never_keeps_setuid_bits(server, tmp_path):
    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")
    os.chmod(dst, 0o6755)
    _image(server, dst)
    mode = os.stat(dst).st_mode
    assert dst.read_bytes()[:8] == PNG_MAGIC
    assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)
    assert stat.S_IMODE(mode) == 0o755


# --------------------------------------------------------------------- 9. leftovers


def test_a_killed_writes_partial_file_is_removed_at_the_next_write(server, tmp_path):
    dst = tmp_path / "out.png"
    stale = [tmp_path / ".out.png.k1ll3d_x.partial", tmp_path / ".out.png.abcd1234.partial.mp4"]
    for file in stale:
        file.write_bytes(b"half a picture")
    other = tmp_path / ".other.png.abcd1234.partial"
    other.write_bytes(b"someone else's")
    _image(server, dst)
    assert dst.read_bytes()[:8] == PNG_MAGIC
    assert [f for f in stale if f.exists()] == []
    assert other.exists()


# --------------------------------------------------------------------- 6. metrics port


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_idle_metrics_connections_cost_no_thread_each(tmp_path):
    port = free_port()
    proc = start_backend(tmp_path, env={"DIFFUSERS_METRICS_ADDR": f"127.0.0.1:{port}"})
    sockets = []
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert b"diffusers_" in urllib.request.urlopen(url, timeout=10).read()
        before = _threads(proc.proc.pid)
        for _ in range(400):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.send(b"GET /metrics HTTP/1.1\r\n")  # and never finish the request
            sockets.append(sock)
        time.sleep(1.0)
        assert _threads(proc.proc.pid) - before < 10
        fds = len(os.listdir(f"/proc/{proc.proc.pid}/fd"))
        assert fds < 200, fds
        body = urllib.request.urlopen(url, timeout=10).read()
        assert b"diffusers_grpc_requests" in body or b"process_" in body
    finally:
        for sock in sockets:
            sock.close()
        proc.stop()

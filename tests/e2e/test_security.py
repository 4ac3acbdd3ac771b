"""Security on real server processes: bearer token on every RPC, ModelIdentity, loopback
default, SAFETENSORS, remote code, and a token that never reaches the log."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import (
    PNG_MAGIC,
    REPO_ROOT,
    BackendProcess,
    backend_pb2,
    backend_pb2_grpc,
    start_backend,
    wait_for_log,
    wait_for_state,
)
from PIL import Image

TOKEN = "s3cret-Token-4a7f19c2"
WRONG = "wrong-Token-88e2d0b1"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> BackendProcess:
    proc = start_backend(tmp_path_factory.mktemp("auth-server"),
                         env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN},
                         metadata=(("authorization", f"Bearer {TOKEN}"),))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory) -> BackendProcess:
    proc = start_backend(tmp_path_factory.mktemp("plain-server"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def permissive_server(tmp_path_factory) -> BackendProcess:
    proc = start_backend(tmp_path_factory.mktemp("permissive-server"),
                         env={"SAFETENSORS": "0", "DIFFUSERS_ALLOW_REMOTE_CODE": "1"})
    yield proc
    proc.stop()


# --------------------------------------------------------------------------- every RPC

Call = Callable[[grpc.Channel, tuple], object]


def _every_rpc(tiny_sd: Path, out: Path, src: Path) -> dict[str, Call]:
    """One call per RPC; each returns something to check when authorised."""

    def backend(channel):
        return backend_pb2_grpc.BackendStub(channel)

    def reflection(channel, md):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md,
            timeout=10)
        return sorted(s.name for r in responses for s in r.list_services_response.service)

    return {
        "Health": lambda ch, md: backend(ch).Health(backend_pb2.HealthMessage(), metadata=md,
                                                    timeout=10),
        "Status": lambda ch, md: backend(ch).Status(backend_pb2.HealthMessage(), metadata=md,
                                                    timeout=10),
        "LoadModel": lambda ch, md: backend(ch).LoadModel(
            backend_pb2.ModelOptions(Model=str(tiny_sd)), metadata=md, timeout=180),
        "GenerateImage": lambda ch, md: backend(ch).GenerateImage(
            backend_pb2.GenerateImageRequest(positive_prompt="x", width=64, height=64, step=1,
                                             seed=1, dst=str(out / "image.png")),
            metadata=md, timeout=60),
        "GenerateVideo": lambda ch, md: backend(ch).GenerateVideo(
            backend_pb2.GenerateVideoRequest(prompt="x", dst=str(out / "video.mp4")),
            metadata=md, timeout=60),
        "UpscaleImage": lambda ch, md: backend(ch).UpscaleImage(
            backend_pb2.UpscaleImageRequest(src=str(src), dst=str(out / "up.png"), scale=2),
            metadata=md, timeout=60),
        "Free": lambda ch, md: backend(ch).Free(backend_pb2.HealthMessage(), metadata=md,
                                                timeout=60),
        "grpc.health.Check": lambda ch, md: health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), metadata=md, timeout=10),
        "reflection": reflection,
    }


RPC_NAMES = ["Health", "Status", "LoadModel", "GenerateImage", "GenerateVideo", "UpscaleImage",
             "Free", "grpc.health.Check", "reflection"]
BAD_METADATA = {
    "none": (),
    "wrong-token": (("authorization", f"Bearer {WRONG}"),),
    "no-bearer-prefix": (("authorization", TOKEN),),
    "lowercase-bearer": (("authorization", f"bearer {TOKEN}"),),
    "token-prefix-only": (("authorization", f"Bearer {TOKEN[:-1]}"),),
    "token-plus-suffix": (("authorization", f"Bearer {TOKEN}x"),),
}


def _workdir(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), (50, 60, 70)).save(src)
    return out, src


def _check_authorised(name: str, result, out: Path) -> None:
    if name == "Health":
        assert result.message == b"OK"
    elif name == "Status":
        assert result.state in (backend_pb2.StatusResponse.READY,
                                backend_pb2.StatusResponse.UNINITIALIZED)
    elif name == "LoadModel":
        assert result.success, result.message
    elif name == "GenerateImage":
        assert result.success and (out / "image.png").read_bytes()[:8] == PNG_MAGIC
    elif name == "UpscaleImage":
        assert result.success and Image.open(out / "up.png").size == (64, 64)
    elif name == "Free":
        assert result.success
    elif name == "grpc.health.Check":
        assert result.status == health_pb2.HealthCheckResponse.SERVING
    elif name == "reflection":
        assert "backend.Backend" in result


@pytest.mark.parametrize("bad", list(BAD_METADATA))
def test_auth_on_refuses_every_rpc_without_the_token(auth_server, tiny_sd, tmp_path, bad):
    out, src = _workdir(tmp_path)
    calls = _every_rpc(tiny_sd, out, src)
    state_before = auth_server.status().state
    for name in RPC_NAMES:
        with pytest.raises(grpc.RpcError) as err:
            result = calls[name](auth_server.channel, BAD_METADATA[bad])
            if name == "reflection":
                list(result)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, err.value.details())
        assert "bearer token" in err.value.details()
    # Refused calls did nothing: no file written, no model loaded or freed.
    assert list(out.iterdir()) == []
    assert auth_server.status().state == state_before


def test_auth_on_accepts_every_rpc_with_the_token(auth_server, tiny_sd, tmp_path):
    out, src = _workdir(tmp_path)
    calls = _every_rpc(tiny_sd, out, src)
    good = (("authorization", f"Bearer {TOKEN}"),)
    for name in RPC_NAMES:
        if name == "GenerateVideo":
            with pytest.raises(grpc.RpcError) as err:  # authorised; an image model is loaded
                calls[name](auth_server.channel, good)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not a video model
            continue
        _check_authorised(name, calls[name](auth_server.channel, good), out)


def test_auth_refusal_is_fast_while_busy(auth_server, tiny_sd, tmp_path):
    """Unauthenticated calls are refused on the control pool, not behind generations."""
    assert auth_server.load(tiny_sd).success
    future = auth_server.stub.GenerateImage.future(backend_pb2.GenerateImageRequest(
        positive_prompt="busy", width=64, height=64, step=400, dst=str(tmp_path / "busy.png")),
        metadata=auth_server.metadata, timeout=120)
    wait_for_state(auth_server, backend_pb2.StatusResponse.BUSY)  # the generation runs
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        auth_server.stub.GenerateImage(backend_pb2.GenerateImageRequest(
            positive_prompt="x", dst=str(tmp_path / "x.png")), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.perf_counter() - started < 0.5
    assert auth_server.status().state == backend_pb2.StatusResponse.BUSY  # still generating
    assert future.cancel()  # 400 steps would take minutes; the server stops at the next step
    wait_for_state(auth_server, backend_pb2.StatusResponse.READY)


def test_token_never_reaches_the_log(auth_server, tiny_sd, tmp_path):
    out, src = _workdir(tmp_path)
    calls = _every_rpc(tiny_sd, out, src)
    for md in ((("authorization", f"Bearer {TOKEN}"),), (("authorization", f"Bearer {WRONG}"),)):
        for name in ("Health", "Status", "GenerateImage", "UpscaleImage"):
            try:
                calls[name](auth_server.channel, md)
            except grpc.RpcError:
                pass
    # A request whose failure is logged, with the token in metadata.
    offset = len(auth_server.log())
    with pytest.raises(grpc.RpcError):
        auth_server.image(tmp_path / "missing" / "x.png")
    wait_for_log(auth_server, "GenerateImage NOT_FOUND", since=offset)  # its request line
    log = auth_server.log()
    assert "serving on" in log and "auth_token='***'" in log
    assert TOKEN not in log
    assert WRONG not in log
    assert TOKEN[4:-4] not in log  # not even a fragment


def test_auth_off_every_rpc_works_without_metadata(plain_server, tiny_sd, tmp_path):
    out, src = _workdir(tmp_path)
    calls = _every_rpc(tiny_sd, out, src)
    for md in ((), (("authorization", f"Bearer {WRONG}"),)):  # a stray header is ignored
        for name in RPC_NAMES:
            if name == "GenerateVideo":
                with pytest.raises(grpc.RpcError) as err:
                    calls[name](plain_server.channel, md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # image model
                continue
            _check_authorised(name, calls[name](plain_server.channel, md), out)


# --------------------------------------------------------------------------- ModelIdentity


def test_model_identity(plain_server, tiny_sd, tmp_path):
    assert plain_server.load(tiny_sd).success
    model = str(tiny_sd)
    # Same identity, or an empty one: served.
    assert plain_server.image(tmp_path / "same.png", ModelIdentity=model).success
    assert plain_server.image(tmp_path / "empty.png", ModelIdentity="").success
    # Another model's identity: NOT_FOUND, message starts as the host expects.
    for rpc in ("image", "video"):
        with pytest.raises(grpc.RpcError) as err:
            if rpc == "image":
                plain_server.image(tmp_path / "other.png", ModelIdentity="stabilityai/sd-turbo")
            else:
                plain_server.stub.GenerateVideo(backend_pb2.GenerateVideoRequest(
                    prompt="x", dst=str(tmp_path / "other.mp4"),
                    ModelIdentity="stabilityai/sd-turbo"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details().startswith("model identity mismatch")
        assert "stabilityai/sd-turbo" in err.value.details()
    assert not (tmp_path / "other.png").exists() and not (tmp_path / "other.mp4").exists()
    # After Free the server serves no model: the identity check is skipped and the
    # request is refused for what it is (nothing loaded).
    plain_server.stub.Free(backend_pb2.HealthMessage(), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        plain_server.image(tmp_path / "after-free.png", ModelIdentity="stabilityai/sd-turbo")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A failed LoadModel does not change the recorded model.
    assert plain_server.load(tiny_sd).success
    assert not plain_server.load(tmp_path / "does-not-exist").success
    assert plain_server.image(tmp_path / "kept.png", ModelIdentity=model).success


# --------------------------------------------------------------------------- loopback


def test_default_address_is_loopback():
    proc = subprocess.run([sys.executable, "-m", "diffusers_backend", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "127.0.0.1:50051" in proc.stdout
    from diffusers_backend.__main__ import DEFAULT_ADDR

    assert DEFAULT_ADDR.startswith("127.0.0.1:")


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            address, hex_port = parts[1].split(":")
            if int(hex_port, 16) == port and parts[3] == "0A":  # 0A = LISTEN
                found.append(address)
    return found


def test_started_without_addr_listens_on_loopback_only(tmp_path):
    if _listening(50051):
        pytest.skip("port 50051 is in use on this machine")
    log = open(tmp_path / "default-addr.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "diffusers_backend"], cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        channel = grpc.insecure_channel("127.0.0.1:50051")
        backend_pb2_grpc.BackendStub(channel).Health(backend_pb2.HealthMessage(), timeout=30,
                                                     wait_for_ready=True)
        channel.close()
        addresses = _listening(50051)
        assert addresses, "nothing listens on 50051"
        # 127.0.0.1 only: as IPv4, or IPv4-mapped on an IPv6 socket (::ffff:127.0.0.1)
        loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
        assert set(addresses) <= loopback, addresses
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# --------------------------------------------------------------------------- weights & code


@pytest.mark.parametrize("ext", [".ckpt", ".bin", ".pt", ".pth"])
def test_safetensors_default_refuses_pickle_checkpoints(plain_server, tmp_path, ext):
    from tiny_models import tiny_pickle_checkpoint

    file = tiny_pickle_checkpoint(tmp_path, ext=ext)  # a real, loadable pickle checkpoint
    result = plain_server.load(file)
    assert not result.success
    assert "pickle" in result.message and "SAFETENSORS=0" in result.message
    assert file.name in result.message


def test_safetensors_default_refuses_a_folder_of_pickle_weights(plain_server, tiny_sd, tmp_path):
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_sd, folder)
    for weights in folder.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    result = plain_server.load(folder)
    assert not result.success
    assert "SAFETENSORS=1" in result.message and "SAFETENSORS=0" in result.message


def test_safetensors_0_loads_a_pickle_checkpoint(permissive_server, tiny_sd, tmp_path):
    from tiny_models import tiny_pickle_checkpoint

    file = tiny_pickle_checkpoint(tmp_path, ext=".ckpt")
    result = permissive_server.load(file, Options=[f"config:{tiny_sd}"])
    assert result.success, result.message
    assert permissive_server.image(tmp_path / "from-ckpt.png", step=1).success


REMOTE_CODE_REQUESTS = {
    "option-trust_remote_code": {"Options": ["trust_remote_code:true"]},
    "engineargs-trust_remote_code": {"EngineArgs": '{"trust_remote_code": true}'},
    "engineargs-custom_pipeline": {"EngineArgs": '{"custom_pipeline": "x"}'},
    "option-custom_pipeline": {"Options": ["custom_pipeline:x"]},
}


@pytest.mark.parametrize("name", list(REMOTE_CODE_REQUESTS))
def test_remote_code_refused_by_default(plain_server, tiny_sd, name):
    result = plain_server.load(tiny_sd, **REMOTE_CODE_REQUESTS[name])
    assert not result.success
    assert "DIFFUSERS_ALLOW_REMOTE_CODE=1" in result.message


def test_remote_code_allowed_with_the_setting(permissive_server, tiny_sd):
    # The folder has no custom code, so trusting it simply loads the ordinary pipeline.
    result = permissive_server.load(tiny_sd, Options=["trust_remote_code:true"])
    assert result.success, result.message
    # custom_pipeline is attempted (not refused); offline it fails for its own reason.
    result = permissive_server.load(tiny_sd, EngineArgs='{"custom_pipeline": "x"}')
    assert "DIFFUSERS_ALLOW_REMOTE_CODE" not in result.message

"""Plugging into LocalAI: run.sh started the way LocalAI starts an external backend. The
backend-gallery packaging (Dockerfile + gallery.yaml) is read in process in
tests/unit/test_localai_packaging.py.

``--external-grpc-backends "diffusers:<path>/run.sh"`` makes LocalAI run ``run.sh --addr
127.0.0.1:PORT`` from its own working directory, with its environment plus ``HF_HOME`` set to
the models folder; it polls Health (20 tries, 2 s apart, 10 s deadline each), then loads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
import pytest
from features_support import pixels
from harness import REPO_ROOT, backend_pb2, backend_pb2_grpc, free_port
from localai_host import LocalAIHost
from tiny_models import tiny_sd_path

TOKEN = "launch-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _wait_healthy(stub, proc) -> float:
    """The host's Health poll; returns seconds until the first OK."""
    started = time.monotonic()
    for _ in range(20):
        if proc.poll() is not None:
            raise AssertionError(f"run.sh exited with {proc.returncode}")
        try:
            if stub.Health(backend_pb2.HealthMessage(), timeout=10,
                           metadata=AUTH).message == b"OK":
                return time.monotonic() - started
        except grpc.RpcError:
            time.sleep(0.2)  # the host waits 2 s; shorter here keeps the test quick
    raise AssertionError("run.sh never answered Health")


def test_run_sh_from_another_directory_with_the_hosts_environment(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-sd").symlink_to(tiny_sd_path())
    elsewhere = tmp_path / "localai-cwd"
    elsewhere.mkdir()
    port = free_port()
    env = {**os.environ, "HF_HOME": str(models), "LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
           "LOCALAI_BACKEND_PARENT_WATCH": "true",
           "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": "500ms", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(REPO_ROOT / "run.sh"), "--addr", f"127.0.0.1:{port}"],
                            cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = backend_pb2_grpc.BackendStub(channel)
    try:
        assert _wait_healthy(stub, proc) < 10
        with pytest.raises(grpc.RpcError) as denied:
            stub.Health(backend_pb2.HealthMessage(), timeout=5)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

        host = LocalAIHost({"name": "tiny", "backend": "diffusers", "step": 2,
                            "parameters": {"model": "tiny-sd"}}, models)
        result = stub.LoadModel(host.model_options(), timeout=180, metadata=AUTH)
        assert result.success, result.message
        dst = host.output_file(tmp_path)
        request = host.image_request("a lighthouse|blurry", dst, size="64x64")
        reply = stub.GenerateImage(request, timeout=180, metadata=AUTH)
        assert "image written" in reply.message
        assert pixels(dst).shape == (64, 64, 3)
        assert stub.Free(backend_pb2.HealthMessage(), timeout=30, metadata=AUTH).success
        proc.send_signal(signal.SIGTERM)  # the host stops a backend it evicts
        assert proc.wait(timeout=30) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not list(elsewhere.iterdir()), "run.sh must not write into the host's directory"

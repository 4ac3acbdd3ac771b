"""Plugging into LocalAI: run.sh started the way LocalAI starts an external backend, and the
backend-gallery packaging (Dockerfile + gallery.yaml) consistent with the repository.

``--external-grpc-backends "diffusers:<path>/run.sh"`` makes LocalAI run ``run.sh --addr
127.0.0.1:PORT`` from its own working directory, with its environment plus ``HF_HOME`` set to
the models folder; it polls Health (20 tries, 2 s apart, 10 s deadline each), then loads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import yaml
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


def test_gallery_entries_name_images_the_dockerfile_builds():
    """Every variant LocalAI may pick has an image whose BUILD_TYPE has a requirements file,
    and the image puts run.sh at its top level (where LocalAI looks for it)."""
    entries = yaml.safe_load((REPO_ROOT / "gallery.yaml").read_text())
    by_name = {entry["name"]: entry for entry in entries}
    meta = by_name["diffusers-grpc"]
    assert meta["alias"] == "diffusers"
    for capability, name in meta["capabilities"].items():
        uri = by_name[name]["uri"]
        build_type = uri.rsplit("-", 1)[-1]
        assert (REPO_ROOT / f"requirements-{build_type}.txt").is_file(), (capability, uri)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "FROM scratch" in dockerfile and "COPY --from=builder /backend/ /" in dockerfile
    assert "run.sh" in dockerfile
    run_sh = (REPO_ROOT / "run.sh").read_text()
    assert "python/bin/python3" in run_sh  # the interpreter the image bundles


def test_the_docs_show_the_three_ways_localai_runs_this_backend():
    readme = (REPO_ROOT / "README.md").read_text()
    assert '--external-grpc-backends "diffusers:' in readme and "/run.sh" in readme
    page = (REPO_ROOT / "docs" / "localai.md").read_text()
    assert '--external-grpc-backends "diffusers:' in page  # 1. LocalAI starts it
    assert '--external-grpc-backends "diffusers:gpu-box:50051"' in page  # 2. already running
    assert "LOCALAI_BACKEND_GALLERIES" in page  # 3. a gallery image
    assert Path(REPO_ROOT / "gallery.yaml").name in page

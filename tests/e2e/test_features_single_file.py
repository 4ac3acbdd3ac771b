"""Single-file checkpoints (.safetensors) loaded offline with the ``config`` option."""

from __future__ import annotations

import pytest
from features_support import load_ok, pixels
from harness import backend_pb2
from tiny_models import fixture_dir, tiny_sd_single_file

pytestmark = pytest.mark.usefixtures("free_backend_after")


def test_single_file_with_config_generates(backend, tiny_sd, tmp_path):
    checkpoint = tiny_sd_single_file("safetensors")
    result = backend.stub.LoadModel(backend_pb2.ModelOptions(
        Model=checkpoint.name, ModelPath=str(checkpoint.parent), ModelFile=str(checkpoint),
        Options=[f"config:{tiny_sd}"]), timeout=180)
    assert result.success, result.message
    backend.image(tmp_path / "single.png", seed=3)
    load_ok(backend, tiny_sd)
    backend.image(tmp_path / "folder.png", seed=3)
    # the same weights as the folder: (nearly) the same picture
    assert abs(pixels(tmp_path / "single.png") - pixels(tmp_path / "folder.png")).max() <= 2


def test_config_is_what_makes_the_offline_load_work(backend):
    """Without config, diffusers would fetch the architecture's config from the Hub."""
    checkpoint = tiny_sd_single_file("safetensors")
    result = backend.load(checkpoint)
    assert not result.success
    assert "config:" in result.message  # the hint names the option to set
    load_ok(backend, checkpoint, ModelPath=str(fixture_dir()), Options=["config:tiny-sd"])

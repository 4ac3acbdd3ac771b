"""ControlNet from an ordinary photo, over gRPC: ``control_preprocess:canny`` (our numpy/scipy
Canny) and ``control_preprocess:depth`` with a local ``control_annotator`` folder turn the
control image into the map the ControlNet reads; annotators that need weights we do not have
are refused at LoadModel. The preprocessing itself and the option checks are tested in
process in tests/unit/test_control_annotators.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from features_support import free, load_ok, mean_diff, same
from PIL import Image, ImageDraw
from tiny_annotators import tiny_depth_annotator_path
from tiny_models import tiny_controlnet_path

from diffusers_backend.media.control import canny_image


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """An ordinary picture: shapes on a gradient (edges inside, not only noise)."""
    folder = tmp_path_factory.mktemp("photo")
    ramp = np.linspace(30, 220, 64, dtype=np.uint8)
    image = Image.fromarray(np.stack([np.tile(ramp, (64, 1))] * 3, axis=-1))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 10, 40, 42), fill=(250, 40, 40))
    draw.rectangle((34, 30, 58, 58), fill=(20, 20, 160))
    image.save(folder / "photo.png")
    canny_image(image).save(folder / "edges.png")
    return folder / "photo.png"


def test_canny_preprocessing_changes_the_control_input_and_the_output(backend, tiny_sd, photo,
                                                                      tmp_path):
    """With control_preprocess:canny a photo gives exactly the picture its edge map gives
    without preprocessing, and a different one from the raw photo."""
    edges = photo.parent / "edges.png"
    try:
        load_ok(backend, tiny_sd, ControlNet=str(tiny_controlnet_path()))
        backend.image(tmp_path / "raw.png", src=str(photo), seed=8)
        backend.image(tmp_path / "edges.png", src=str(edges), seed=8)
        result = load_ok(backend, tiny_sd, ControlNet=str(tiny_controlnet_path()),
                         Options=["control_preprocess:canny", "canny_low:100",
                                  "canny_high:200"])
        assert "warnings" not in result.message  # load-time keys, not call options
        backend.image(tmp_path / "canny.png", src=str(photo), seed=8)
    finally:
        free(backend)
    assert same(tmp_path / "canny.png", tmp_path / "edges.png")
    assert mean_diff(tmp_path / "canny.png", tmp_path / "raw.png") > 1


def test_depth_preprocessing_over_grpc(backend, tiny_sd, photo, tmp_path):
    annotator = tiny_depth_annotator_path()
    try:
        load_ok(backend, tiny_sd, ControlNet=str(tiny_controlnet_path()))
        backend.image(tmp_path / "raw.png", src=str(photo), seed=8)
        load_ok(backend, tiny_sd, ControlNet=str(tiny_controlnet_path()),
                ModelPath=str(annotator.parent),
                Options=["control_preprocess:depth", f"control_annotator:{annotator.name}"])
        backend.image(tmp_path / "depth.png", src=str(photo), seed=8)
    finally:
        free(backend)
    assert mean_diff(tmp_path / "depth.png", tmp_path / "raw.png") > 1


def test_unsupported_annotator_fails_the_load(backend, tiny_sd):
    try:
        result = backend.load(tiny_sd, ControlNet=str(tiny_controlnet_path()),
                              Options=["control_preprocess:openpose"])
        assert not result.success
        assert "openpose" in result.message and "canny" in result.message
        result = backend.load(tiny_sd, ControlNet=str(tiny_controlnet_path()),
                              Options=["control_preprocess:depth"])
        assert not result.success and "control_annotator" in result.message
    finally:
        free(backend)

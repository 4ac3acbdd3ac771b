"""ControlNet from an ordinary photo: ``control_preprocess:canny`` (our numpy/scipy Canny) and
``control_preprocess:depth`` with a local ``control_annotator`` folder turn the control image
into the map the ControlNet reads; annotators that need weights we do not have are refused at
LoadModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from features_support import free, load_ok, mean_diff, same
from PIL import Image, ImageDraw
from tiny_models import cached_build, tiny_controlnet_path

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.control_options import check_control_options
from diffusers_backend.media.control import (
    canny_edges,
    canny_image,
    depth_image,
    preprocess_control,
)

# ----------------------------------------------------------------------------- Canny


def _square(size=32, box=(8, 8, 24, 24), inside=255, outside=0) -> np.ndarray:
    arr = np.full((size, size), outside, dtype=np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = inside
    return arr


def test_canny_finds_the_outline_of_a_square_and_nothing_else():
    edges = canny_edges(_square())
    ring = np.zeros_like(edges)
    ring[6:26, 6:26] = True
    ring[10:22, 10:22] = False
    assert edges.any()
    assert not edges[~ring].any()  # nothing inside the square or far outside it
    for row in (12, 16, 20):  # thin: one pixel per crossing on each side
        assert edges[row, :16].sum() == 1 and edges[row, 16:].sum() == 1
    for col in (12, 16, 20):
        assert edges[:16, col].sum() == 1 and edges[16:, col].sum() == 1


def test_canny_thresholds_are_cv2s_scale():
    """A straight step of 40 grey levels has a 3x3 Sobel L1 magnitude of 160: an edge at
    100/150, none at the default 100/200 (cv2.Canny's thresholds mean the same)."""
    faint = np.zeros((32, 32), dtype=np.uint8)
    faint[:, 16:] = 40
    assert not canny_edges(faint, 100, 200).any()
    edges = canny_edges(faint, 100, 150)
    assert edges[1:-1, 15:17].sum(axis=1).tolist() == [1] * 30  # one line along the step


def test_canny_hysteresis_keeps_weak_edges_only_when_connected_to_strong_ones():
    arr = np.zeros((40, 40), dtype=np.uint8)
    arr[4:20, 20:] = 255   # strong vertical edge at x=20 for rows 4..19
    arr[20:36, 20:] = 40   # the same edge continues faint (magnitude 160) below it
    arr[:, 4:10] = 40      # a faint, isolated bar on the left (no corners: full height)
    edges = canny_edges(arr, 100, 200)
    assert edges[24:32, 18:22].any()  # the faint continuation is kept
    assert not edges[:, :14].any()  # the isolated faint bar is dropped


def test_canny_uses_the_strongest_colour_channel():
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[8:24, 8:24, 0] = 255  # red on black: the grey version would be weaker
    assert canny_edges(rgb).any()
    assert np.array_equal(canny_edges(rgb), canny_edges(_square()))


def test_canny_image_is_white_edges_on_black_rgb_of_the_same_size():
    photo = Image.fromarray(_square(48, (10, 12, 30, 40))).convert("RGB").resize((50, 48))
    out = canny_image(photo)
    assert out.mode == "RGB" and out.size == photo.size
    values = np.unique(np.asarray(out))
    assert set(values.tolist()) == {0, 255}
    assert preprocess_control(photo, {}) is photo  # no option: the image as sent
    assert np.array_equal(np.asarray(preprocess_control(photo, {"control_preprocess": "canny"})),
                          np.asarray(out))


# ------------------------------------------------------------------------ load checks


def test_options_refused_at_load(tmp_path):
    check_control_options({"control_preprocess": "canny", "canny_low": 50, "canny_high": 80}, "")
    check_control_options({}, "")
    cases = [
        ({"control_preprocess": "openpose"}, "needs annotator weights"),
        ({"control_preprocess": "sketchy"}, "is not known"),
        ({"control_preprocess": "depth"}, "control_annotator"),
        ({"control_preprocess": "depth", "control_annotator": "nowhere"}, "not found"),
        ({"control_preprocess": "depth", "control_annotator": str(tmp_path)}, "config.json"),
        ({"control_preprocess": "canny", "canny_low": 300, "canny_high": 200}, "canny_low"),
        ({"control_preprocess": "canny", "canny_high": "high"}, "canny_high"),
        ({"control_annotator": str(tmp_path)}, "control_preprocess is not"),
    ]
    for options, text in cases:
        with pytest.raises(LoadError, match=text):
            check_control_options(options, str(tmp_path))


# ----------------------------------------------------------------------------- depth


def _build_depth_annotator(path: Path) -> None:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    try:  # transformers 5 without torchvision: the PIL backend
        from transformers import DPTImageProcessorPil as Processor
    except ImportError:
        from transformers import DPTImageProcessor as Processor

    torch.manual_seed(0)
    DPTForDepthEstimation(DPTConfig(
        image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3), num_attention_heads=4, intermediate_size=37,
        neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_hidden_size=16,
        is_hybrid=False)).eval().save_pretrained(path)
    Processor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)


def tiny_depth_annotator_path() -> Path:
    """A tiny DPT depth-estimation model with its image processor, in one folder."""
    return cached_build("tiny-depth-annotator", _build_depth_annotator)


def test_depth_annotator_makes_a_depth_map_of_the_picture_size():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3),
                                                                dtype=np.uint8))
    out = depth_image(picture, tiny_depth_annotator_path())
    assert out.mode == "RGB" and out.size == picture.size
    arr = np.asarray(out)
    assert arr.min() == 0 and arr.max() == 255  # scaled to the full range
    assert np.array_equal(arr[:, :, 0], arr[:, :, 1])


# ------------------------------------------------------------------------- over gRPC


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

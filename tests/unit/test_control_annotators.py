"""ControlNet preprocessing in process (``media/control.py``): our numpy/scipy Canny on
known shapes, the depth annotator on a tiny DPT model, and the control options checked at
LoadModel (``loading/control_options.py``). The same preprocessing over gRPC is in
tests/e2e/test_control_preprocess.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_annotators import tiny_depth_annotator_path

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.control_options import check_control_options
from diffusers_backend.media.control import (
    canny_edges,
    canny_image,
    depth_image,
    preprocess_control,
)


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


@pytest.mark.slow  # a whole pipeline or model runs (left out of make test-fast)
def test_depth_annotator_makes_a_depth_map_of_the_picture_size():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3),
                                                                dtype=np.uint8))
    out = depth_image(picture, tiny_depth_annotator_path())
    assert out.mode == "RGB" and out.size == picture.size
    arr = np.asarray(out)
    assert arr.min() == 0 and arr.max() == 255  # scaled to the full range
    assert np.array_equal(arr[:, :, 0], arr[:, :, 1])

"""ControlNet inputs from ordinary pictures: the control image is turned into the map the
ControlNet was trained on before the call.

LocalAI's host sends the control image as the user uploaded it. A canny ControlNet fed a photo
instead of an edge map steers the picture badly, so a model YAML may ask for preprocessing:

* ``control_preprocess:canny`` (thresholds ``canny_low:100``, ``canny_high:200``, as
  ``cv2.Canny`` takes them): the Canny edge detector, written here with numpy and scipy
  (OpenCV is not a dependency): Sobel gradients on 0..255 values, the strongest colour
  channel per pixel, non-maximum suppression along the gradient direction, then hysteresis
  (weak edges kept only where they connect to strong ones). White edges on black, RGB.
* ``control_preprocess:depth`` with ``control_annotator:<folder>``: a local transformers
  depth-estimation model (DPT, Depth Anything, GLPN...) makes a depth map (near = bright).
  The annotator runs on the CPU, loaded once per folder.

Other annotators (pose, segmentation, lineart...) need weights this backend cannot fetch or
run; naming one, or ``depth`` without a local annotator folder, fails LoadModel with a message
that says what is supported (``loading/control_options.py``, run while the YAML is validated).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.control_options import (
    annotator_folder,
    canny_thresholds,
    preprocess_method,
)

log = logging.getLogger(__name__)

_annotators: dict[str, tuple[Any, Any]] = {}
_annotator_lock = threading.Lock()


def preprocess_control(image: Any, options: dict[str, Any], model_path: str = "") -> Any:
    """The control image for a ControlNet call: ``image`` as is, or its edge/depth map."""
    method = preprocess_method(options)
    if not method:
        return image
    if method == "canny":
        low, high = canny_thresholds(options)
        return canny_image(image, low, high)
    if method == "depth":
        folder = annotator_folder(options, model_path)
        if folder is None:  # check_control_options refused this at load
            raise LoadError("control_preprocess:depth needs control_annotator:<folder>")
        return depth_image(image, folder)
    raise LoadError(f"control_preprocess:{method} is not supported")


# ----------------------------------------------------------------------------- Canny


def canny_edges(pixels: np.ndarray, low: float = 100.0, high: float = 200.0) -> np.ndarray:
    """Boolean edge map of an HxW or HxWxC image with 0..255 values (Canny's algorithm).

    Thresholds are on the L1 gradient magnitude ``|gx| + |gy|`` of 3x3 Sobel filters, the
    strongest channel per pixel, as OpenCV's ``Canny(image, low, high)`` reads them.
    """
    from scipy import ndimage

    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] < 3 or arr.shape[1] < 3:
        return np.zeros(arr.shape[:2], dtype=bool)
    gx = np.stack([ndimage.sobel(arr[:, :, c], axis=1, mode="nearest")
                   for c in range(arr.shape[2])], axis=-1)
    gy = np.stack([ndimage.sobel(arr[:, :, c], axis=0, mode="nearest")
                   for c in range(arr.shape[2])], axis=-1)
    magnitude = np.abs(gx) + np.abs(gy)
    strongest = magnitude.argmax(axis=-1)[:, :, None]
    magnitude = np.take_along_axis(magnitude, strongest, axis=-1)[:, :, 0]
    gx = np.take_along_axis(gx, strongest, axis=-1)[:, :, 0]
    gy = np.take_along_axis(gy, strongest, axis=-1)[:, :, 0]
    thin = _non_maximum_suppression(magnitude, gx, gy)
    strong = thin > high
    weak = thin > low
    # Hysteresis: keep weak pixels in 8-connected groups that hold a strong one.
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(weak)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    edges: np.ndarray = keep[labels]
    edges[[0, -1], :] = False  # OpenCV leaves the one-pixel border empty too
    edges[:, [0, -1]] = False
    return edges


def _non_maximum_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The magnitude where it is a local maximum across the edge, else 0.

    The gradient direction is rounded to one of four (0, 45, 90, 135 degrees); a pixel
    survives when it is larger than the neighbour behind it along that direction and not
    smaller than the one ahead.
    """
    padded = np.pad(magnitude, 1, mode="constant")
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (np.floor((angle + 22.5) / 45.0).astype(np.int8)) % 4
    # Image rows grow downwards: a gradient at +45 degrees points down-right.
    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)),
                  2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    keep = np.zeros_like(magnitude, dtype=bool)
    for index, ((ay, ax), (by, bx)) in neighbours.items():
        # Strict on one side, as OpenCV does: a two-pixel plateau (a sharp step) keeps one.
        local = (magnitude >= shifted(ay, ax)) & (magnitude > shifted(by, bx))
        keep |= (sector == index) & local
    return np.where(keep, magnitude, 0.0)


def canny_image(image: Any, low: float = 100.0, high: float = 200.0) -> Any:
    """A PIL picture's Canny edge map as an RGB image: white edges on black."""
    from PIL import Image

    edges = canny_edges(np.asarray(image.convert("RGB")), low, high)
    grey = edges.astype(np.uint8) * 255
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


# ----------------------------------------------------------------------------- depth


def _load_annotator(folder: Path) -> tuple[Any, Any]:
    key = str(folder.resolve())
    with _annotator_lock:
        if key not in _annotators:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            try:
                processor = AutoImageProcessor.from_pretrained(key)
                model = AutoModelForDepthEstimation.from_pretrained(key).eval()
            except Exception as exc:  # noqa: BLE001 - reported with the folder
                raise LoadError(f"could not load control_annotator {folder} as a "
                                f"depth-estimation model: {str(exc).splitlines()[0][:200]}"
                                ) from exc
            log.info("control annotator loaded: %s (%s)", folder, type(model).__name__)
            _annotators[key] = (processor, model)
        return _annotators[key]


def depth_image(image: Any, folder: Path) -> Any:
    """The picture's depth map from a local depth-estimation model, as an RGB image of the
    picture's size, scaled to 0..255 (larger predicted values brighter, as annotators do)."""
    import torch
    from PIL import Image

    processor, model = _load_annotator(folder)
    rgb = image.convert("RGB")
    with torch.no_grad():
        inputs = processor(images=rgb, return_tensors="pt")
        predicted = model(**inputs).predicted_depth
    depth = predicted.float()
    if depth.ndim == 3:
        depth = depth[:, None]
    depth = torch.nn.functional.interpolate(depth, size=(rgb.height, rgb.width),
                                            mode="bicubic", align_corners=False)[0, 0]
    depth = depth.numpy()
    lo, hi = float(depth.min()), float(depth.max())
    scaled = (depth - lo) / (hi - lo) if hi > lo else np.zeros_like(depth)
    grey = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")

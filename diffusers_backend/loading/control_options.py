"""The ControlNet preprocessing options of a model YAML (``control_preprocess``,
``control_annotator``, ``canny_low``, ``canny_high``), read and checked at load time; the
preprocessing itself is :mod:`diffusers_backend.media.control`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import local_paths

PREPROCESS_KEY = "control_preprocess"
ANNOTATOR_KEY = "control_annotator"
CANNY_DEFAULTS = (100.0, 200.0)
METHODS = ("canny", "depth")
# What each needs: None = built in; a string = the kind of local annotator folder.
_ANNOTATORS = {"canny": None, "depth": "a transformers depth-estimation model folder"}
_KNOWN_NEEDING_WEIGHTS = ("pose", "openpose", "dwpose", "seg", "segmentation", "normal",
                          "lineart", "softedge", "hed", "mlsd", "scribble", "midas", "zoe")


def preprocess_method(options: dict[str, Any]) -> str:
    value = options.get(PREPROCESS_KEY)
    if value is None or value is False:
        return ""
    return str(value).strip().lower()


def canny_thresholds(options: dict[str, Any]) -> tuple[float, float]:
    """``canny_low`` / ``canny_high`` (0..255 scale, cv2.Canny's meaning), validated."""
    values = []
    for key, default in zip(("canny_low", "canny_high"), CANNY_DEFAULTS, strict=True):
        raw = options.get(key, default)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
            raise LoadError(f"{key} must be a number of 0 or more, got {raw!r}")
        values.append(float(raw))
    low, high = values
    if low > high:
        raise LoadError(f"canny_low ({low:g}) must not be above canny_high ({high:g})")
    return low, high


def annotator_folder(options: dict[str, Any], model_path: str) -> Path | None:
    """The local folder ``control_annotator`` names (absolute, or under the models path)."""
    name = str(options.get(ANNOTATOR_KEY, "") or "").strip()
    if not name:
        return None
    for candidate in local_paths.candidates(name, model_path or ""):
        if candidate.is_dir():
            return candidate
    raise LoadError(f"control_annotator folder not found: {name} (models folder: "
                    f"{model_path or 'not set'}); give a local folder holding the annotator "
                    "model (config.json and weights)")


def check_control_options(options: dict[str, Any], model_path: str) -> None:
    """Refuse, at load time, a preprocessing this backend cannot run."""
    method = preprocess_method(options)
    if not method:
        if options.get(ANNOTATOR_KEY):
            raise LoadError("control_annotator is set but control_preprocess is not; add "
                            "control_preprocess:depth (or remove control_annotator)")
        return
    if method not in METHODS:
        hint = (" needs annotator weights this backend cannot run" if any(
            method.startswith(k) for k in _KNOWN_NEEDING_WEIGHTS) else " is not known")
        raise LoadError(
            f"control_preprocess:{method}{hint}; supported: canny (built in, thresholds "
            "canny_low/canny_high) and depth (with control_annotator:<local folder of a "
            "transformers depth-estimation model>). Otherwise send an already processed "
            "control image and leave control_preprocess out")
    if method == "canny":
        canny_thresholds(options)
        return
    folder = annotator_folder(options, model_path)
    if folder is None:
        raise LoadError(
            f"control_preprocess:{method} needs annotator weights: set "
            f"control_annotator:<folder> to {_ANNOTATORS[method]} on disk (absolute, or "
            "relative to the models path); weights are never downloaded for it")
    if not (folder / "config.json").is_file():
        raise LoadError(f"control_annotator {folder} has no config.json; it must be "
                        f"{_ANNOTATORS[method]}")

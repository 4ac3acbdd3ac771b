"""The tiny autoencoder (``AutoencoderTiny``, e.g. TAESD) a model YAML names for live previews,
loaded at LoadModel beside the pipeline.

``preview_decoder:<folder>`` (relative to the models folder, or absolute) names a local
diffusers ``AutoencoderTiny`` folder. The option table declares it a weights path, so it is
confined to DIFFUSERS_ALLOWED_PATHS and checked against SAFETENSORS before anything loads;
here it must exist, be an ``AutoencoderTiny`` and decode as many latent channels as the
model's latents have, else the load fails saying which. It is loaded once, on the
pipeline's device and dtype, and kept with the loaded pipeline (never per request);
engine/previews.py decodes with it when a watcher asked for previews.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from diffusers_backend.errors import BackendError, LoadError, short_message
from diffusers_backend.loading import weight_guard
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)

OPTION = "preview_decoder"
CLASS_NAME = "AutoencoderTiny"


def _folder(name: str, spec: LoadSpec, safetensors_only: bool) -> Path:
    local = weight_guard.local_weights(name, spec.model_path, OPTION, safetensors_only)
    if local is None or not local.is_dir():
        raise LoadError(f"option {OPTION}: no {CLASS_NAME} folder at {name} (models folder: "
                        f"{spec.model_path or 'not set'}); give a local folder holding its "
                        "config.json and weights")
    return local


def _check_class(folder: Path) -> None:
    """The folder's config must declare an AutoencoderTiny (from_pretrained would otherwise
    build one with random weights from another model's config, with only a warning)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoadError(f"option {OPTION}: {folder} has no readable config.json "
                        f"({short_message(exc)})") from None
    found = config.get("_class_name") if isinstance(config, dict) else None
    if found != CLASS_NAME:
        raise LoadError(f"option {OPTION}: {folder} holds a {found or 'model without a class'}"
                        f", not an {CLASS_NAME} (a tiny autoencoder such as TAESD)")


def _latent_channels(pipe: Any) -> int | None:
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    return channels if isinstance(channels, int) else None


def load_preview_decoder(pipe: Any, spec: LoadSpec, device: str, dtype: Any,
                         safetensors_only: bool) -> Any:
    """The ``AutoencoderTiny`` the spec names, ready on ``device`` in ``dtype``; None when
    the YAML names none. A wrong folder is a LoadError saying what is wrong."""
    name = str(spec.options.get(OPTION, "") or "").strip()
    if not name:
        return None
    folder = _folder(name, spec, safetensors_only)
    _check_class(folder)
    try:
        from diffusers import AutoencoderTiny

        strict = weight_guard.strict(safetensors_only)
        decoder = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype,
                                                  local_files_only=True, **strict)
        decoder = decoder.to(device).eval()
        decoder.requires_grad_(False)
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with the folder
        raise LoadError(f"could not load {OPTION} {name}: {short_message(exc)}") from exc
    wanted = _latent_channels(pipe)
    channels = int(decoder.config.latent_channels)
    if wanted is not None and channels != wanted:
        raise LoadError(f"option {OPTION}: {folder} decodes {channels} latent channels; "
                        f"{type(pipe).__name__}'s latents have {wanted}")
    log.info("preview decoder loaded: %s (%s, %s)", folder, device, dtype)
    return decoder

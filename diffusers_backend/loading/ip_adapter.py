"""IP-Adapter: a style or subject picture that steers every generation, loaded at LoadModel.

YAML options: ``ip_adapter`` (a ``.safetensors`` file, or a folder holding one), its CLIP
image encoder (``ip_adapter_image_encoder``; by default the ``image_encoder`` folder beside
the file, as in h94/IP-Adapter) and ``ip_adapter_scale`` (default 1.0). Paths are relative
to the models folder, confined to DIFFUSERS_ALLOWED_PATHS and checked against SAFETENSORS
like every weight; diffusers' ``load_ip_adapter`` does the loading, for the families whose
pipelines have it (SD 1.x/2.x, SDXL, Flux, SD3).

Per request (see tasks/image.py): the first reference image is the adapter's image; a
request without one runs with the adapter's scale at 0 and a blank adapter image, which
leaves the picture exactly as without the adapter. The scale is set before every call, so
no request inherits another's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffusers_backend.errors import BackendError, LoadError, short_message
from diffusers_backend.loading import weight_guard
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)

OPTION = "ip_adapter"
ENCODER_OPTION = "ip_adapter_image_encoder"
SCALE_OPTION = "ip_adapter_scale"
DEFAULT_SCALE = 1.0


def wanted(spec: LoadSpec) -> bool:
    return bool(str(spec.options.get(OPTION, "") or "").strip())


def scale(spec: LoadSpec) -> float:
    """The adapter's strength for requests that send a reference."""
    value = spec.options.get(SCALE_OPTION, DEFAULT_SCALE)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoadError(f"option {SCALE_OPTION} must be a number, got {value!r}")
    return float(value)


def _local(name: str, spec: LoadSpec, what: str, safetensors_only: bool) -> Path:
    local = weight_guard.local_weights(name, spec.model_path, what, safetensors_only)
    if local is None:
        raise LoadError(f"{what} not found: {name} (models folder: "
                        f"{spec.model_path or 'not set'}); give a file or folder on disk")
    return local


def _weight_file(local: Path) -> Path:
    """The adapter's weight file: ``local`` itself, or the one .safetensors in the folder."""
    if local.is_file():
        return local
    files = sorted(local.glob("*.safetensors"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise LoadError(f"option {OPTION}: the folder {local} must hold exactly one "
                        f".safetensors file (found {found}); name the file instead")
    return files[0]


def _encoder_folder(spec: LoadSpec, weights: Path, safetensors_only: bool) -> Path:
    named = str(spec.options.get(ENCODER_OPTION, "") or "").strip()
    if named:
        return _local(named, spec, "IP-Adapter image encoder", safetensors_only)
    beside = weights.parent / "image_encoder"
    if beside.is_dir():
        return _local(str(beside), spec, "IP-Adapter image encoder", safetensors_only)
    raise LoadError(f"option {OPTION}: no image encoder; put it in {beside} or name its folder "
                    f"with the option {ENCODER_OPTION}")


def load_ip_adapter(pipe: Any, spec: LoadSpec, dtype: Any, safetensors_only: bool) -> str:
    """Load the adapter the spec names onto ``pipe``; a note for the load reply ('' if none)."""
    if not wanted(spec):
        return ""
    strength = scale(spec)
    if not hasattr(pipe, "load_ip_adapter"):
        raise LoadError(f"{type(pipe).__name__} cannot take an IP-Adapter (diffusers supports "
                        "them on SD 1.x/2.x, SDXL, Flux and SD3 pipelines)")
    name = str(spec.options[OPTION]).strip()
    weights = _weight_file(_local(name, spec, "IP-Adapter", safetensors_only))
    weight_guard.check_weight_file(str(weights), "IP-Adapter", safetensors_only)
    encoder = _encoder_folder(spec, weights, safetensors_only)
    try:
        from transformers import CLIPVisionModelWithProjection

        strict = weight_guard.strict(safetensors_only)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(encoder), dtype=dtype, local_files_only=True, **strict)
        pipe.register_modules(image_encoder=image_encoder)
        pipe.load_ip_adapter(str(weights.parent), subfolder="", weight_name=weights.name,
                             image_encoder_folder=None, local_files_only=True)
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with the path
        raise LoadError(f"could not load IP-Adapter {name}: {short_message(exc)}") from exc
    log.info("IP-Adapter loaded: %s (encoder %s, scale %s)", weights, encoder, strength)
    return f"IP-Adapter {weights.name} x{strength}"


# What diffusers' load_ip_adapter puts on the denoiser: UNets and Flux get a
# MultiIPAdapterImageProjection as encoder_hid_proj, SD3 an image_proj.
_PROJECTIONS = ("MultiIPAdapterImageProjection", "IPAdapterTimeImageProjection")


def is_loaded(pipe: Any) -> bool:
    """Whether an IP-Adapter sits on ``pipe`` (its projection and image encoder are there)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    projections = (getattr(denoiser, "encoder_hid_proj", None),
                   getattr(denoiser, "image_proj", None))
    return getattr(pipe, "image_encoder", None) is not None and any(
        type(p).__name__ in _PROJECTIONS for p in projections)


def call_kwargs(pipe: Any, spec: LoadSpec, reference: Any) -> dict[str, Any]:
    """Set the adapter's scale for this call (0 without a reference) and return its image.

    Runs on the pipeline thread right before the call; every call sets the scale, so a
    request that turned the adapter on leaves nothing for the next one.
    """
    from PIL import Image

    strength = scale(spec) if reference is not None else 0.0
    pipe.set_ip_adapter_scale(strength)
    if reference is None:
        size = int(getattr(pipe.image_encoder.config, "image_size", 224) or 224)
        reference = Image.new("RGB", (size, size))
    return {"ip_adapter_image": reference}

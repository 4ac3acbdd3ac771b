"""Which pipeline class a model id is: local model_index.json, single-file checkpoint keys,
the Hugging Face cache, then the Hub (with a timeout) when allowed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import threading
from pathlib import Path
from typing import Any

from diffusers_backend.registry.model_files import SINGLE_FILE_SUFFIXES
from diffusers_backend.registry.names import FALLBACK_PIPELINE
from diffusers_backend.registry.store import REGISTRY

logger = logging.getLogger("diffusers_dynamic_loader")

_DEFAULT_SINGLE_FILE_PIPELINE = "StableDiffusionPipeline"
_HUB_TIMEOUT_S = 5.0

# --------------------------------------------------------------------------------------
# Model id -> pipeline name (offline first)
# --------------------------------------------------------------------------------------

# diffusers' checkpoint *types* (infer_diffusers_model_type) -> pipeline; types that are
# components (controlnet, vae, motion adapters) fall through to the default pipeline.
_CHECKPOINT_TYPE_RULES: list[tuple[str, str]] = [
    (r"^xl_inpaint", "StableDiffusionXLInpaintPipeline"),
    (r"^xl_refiner", "StableDiffusionXLImg2ImgPipeline"),
    (r"^(xl_base|playground)", "StableDiffusionXLPipeline"),
    (r"^inpainting", "StableDiffusionInpaintPipeline"),
    (r"^upscale", "StableDiffusionUpscalePipeline"),
    (r"^instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline"),
    (r"^v[12]$", "StableDiffusionPipeline"),
    (r"^sd3", "StableDiffusion3Pipeline"),
    (r"^stable_cascade_stage_b", "StableCascadeDecoderPipeline"),
    (r"^stable_cascade_stage_c", "StableCascadePriorPipeline"),
    (r"^flux-fill", "FluxFillPipeline"),
    (r"^flux-depth", "FluxControlPipeline"),
    (r"^flux-(dev|schnell)", "FluxPipeline"),
    (r"^flux-2", "Flux2Pipeline"),
    (r"^auraflow", "AuraFlowPipeline"),
    (r"^chroma", "ChromaPipeline"),
    (r"^ltx2", "LTX2Pipeline"),
    (r"^ltx-video", "LTXPipeline"),
    (r"^mochi", "MochiPipeline"),
    (r"^hunyuan-video", "HunyuanVideoPipeline"),
    (r"^lumina2", "Lumina2Pipeline"),
    (r"^sana", "SanaPipeline"),
    (r"^wan-t2v", "WanPipeline"),
    (r"^wan-i2v", "WanImageToVideoPipeline"),
    (r"^wan-vace", "WanVACEPipeline"),
    (r"^wan-animate", "WanAnimatePipeline"),
    (r"^hidream", "HiDreamImagePipeline"),
    (r"^cosmos-1\.0-t2w", "CosmosTextToWorldPipeline"),
    (r"^cosmos-1\.0-v2w", "CosmosVideoToWorldPipeline"),
    (r"^cosmos-2\.0-t2i", "Cosmos2TextToImagePipeline"),
    (r"^cosmos-2\.0-v2w", "Cosmos2VideoToWorldPipeline"),
    (r"^z-image-turbo-controlnet", "ZImageControlNetPipeline"),
    (r"^z-image", "ZImagePipeline"),
    (r"^qwen-image", "QwenImagePipeline"),
    (r"^krea2", "Krea2Pipeline"),
]


def _known(name: str | None, default: str) -> str:
    """Map a class name (any case) onto the registry, else ``default``."""
    if not name or not isinstance(name, str):
        return default
    try:
        return REGISTRY.class_name(name)
    except ValueError:
        logger.info("Model declares unknown pipeline %r; using %s", name, default)
        return default


def _class_from_model_index(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        logger.warning("Cannot read %s: %s", path, exc)
        return None
    return data.get("_class_name") if isinstance(data, dict) else None


class _Shape:
    """Stands in for a tensor in diffusers' key/shape checks (only ``.shape`` is read)."""

    __slots__ = ("shape",)

    def __init__(self, shape: list[int] | tuple[int, ...]) -> None:
        self.shape = tuple(shape)


def _safetensors_header(path: Path) -> dict[str, _Shape]:
    """Tensor names and shapes from a .safetensors header (reads a few KB, no torch)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            raise ValueError("implausible safetensors header")
        header = json.loads(fh.read(size))
    return {k: _Shape(v.get("shape", ())) for k, v in header.items() if k != "__metadata__"}


def _checkpoint_view(path: Path) -> dict[str, Any]:
    if path.suffix in (".safetensors", ".sft"):
        return _safetensors_header(path)
    if path.suffix == ".gguf":
        return {}  # a GGUF transformer alone: its pipeline comes from pipeline_type
    import torch  # pickled checkpoints need torch; mmap keeps it cheap

    state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state if isinstance(state, dict) else {}


def _class_from_checkpoint(path: Path) -> str:
    """Ask diffusers what a single-file checkpoint is; map its type to a pipeline."""
    try:
        view = _checkpoint_view(path)
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        model_type = infer_diffusers_model_type(view)
    except Exception as exc:  # unknown layout, unreadable file, old diffusers...
        logger.info(
            "Cannot infer pipeline from %s (%s); using %s", path, exc, _DEFAULT_SINGLE_FILE_PIPELINE
        )
        return _DEFAULT_SINGLE_FILE_PIPELINE
    for pattern, name in _CHECKPOINT_TYPE_RULES:
        if re.search(pattern, str(model_type)):
            return _known(name, _DEFAULT_SINGLE_FILE_PIPELINE)
    return _DEFAULT_SINGLE_FILE_PIPELINE


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _class_from_hub(repo_id: str) -> str | None:
    """``_class_name`` from the HF cache, then (online only) the Hub, with a timeout."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # invalid repo id etc.
        cached = None
    if isinstance(cached, str):
        return _class_from_model_index(Path(cached))
    if _hub_offline():
        return None
    result: dict[str, str | None] = {}

    def fetch() -> None:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo_id, "model_index.json", etag_timeout=_HUB_TIMEOUT_S)
            result["name"] = _class_from_model_index(Path(path))
        except Exception as exc:
            logger.info("No model_index.json for %s on the Hub: %s", repo_id, exc)

    worker = threading.Thread(target=fetch, name="diffusers-model-index", daemon=True)
    worker.start()
    worker.join(_HUB_TIMEOUT_S * 2)
    return result.get("name")


def infer_pipeline_name_from_model_id(model_id: str) -> str:
    """Pipeline class name for a model id, offline first; cached per process.

    * local folder: ``_class_name`` from its ``model_index.json``;
    * single checkpoint file: inferred from its tensor names/shapes by diffusers, default
      ``StableDiffusionPipeline``;
    * Hub id: cached ``model_index.json``, then the Hub (skipped with ``HF_HUB_OFFLINE=1``).

    Falls back to ``DiffusionPipeline`` (which reads ``model_index.json`` itself).
    """
    cached = REGISTRY.model_id_class(model_id)
    if cached is not None:
        return cached
    path = Path(os.path.expanduser(model_id))
    if path.is_dir():
        index = path / "model_index.json"
        found = _class_from_model_index(index) if index.is_file() else None
        name = _known(found, FALLBACK_PIPELINE)
    elif path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            name = _class_from_checkpoint(path)
        elif path.name == "model_index.json":
            name = _known(_class_from_model_index(path), FALLBACK_PIPELINE)
        else:
            name = FALLBACK_PIPELINE
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id) and not model_id.endswith(
        SINGLE_FILE_SUFFIXES
    ):
        name = _known(_class_from_hub(model_id), FALLBACK_PIPELINE)
    else:
        name = FALLBACK_PIPELINE
    REGISTRY.remember_model_id(model_id, name)
    return name


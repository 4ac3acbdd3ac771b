"""The few pipeline families that need more than ``from_pretrained``.

Every other pipeline loads through :func:`default_load`. A special case is one small
function registered in :data:`SPECIAL_LOADERS` under the pipeline class names it serves.
Each one runs in the tests on a tiny real pipeline of its family (tests/tiny_special_models).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import LoadError
from ..settings import Settings
from .model_ref import ModelRef, RefKind
from .spec import LoadSpec

log = logging.getLogger(__name__)

Loader = Callable[[type, ModelRef, dict[str, Any], LoadSpec, Settings], Any]


def default_load(
    cls: type, ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """``from_single_file`` for checkpoints, ``from_pretrained`` for folders and Hub ids."""
    if ref.kind is RefKind.SINGLE_FILE:
        if not hasattr(cls, "from_single_file"):
            raise LoadError(
                f"{cls.__name__} cannot load a single checkpoint file ({ref.location}); "
                "use a diffusers folder or a pipeline_type that supports single files"
            )
        single_kwargs = {
            k: v for k, v in kwargs.items() if k not in {"variant", "use_safetensors"}
        }
        return cls.from_single_file(ref.location, **single_kwargs)
    return cls.from_pretrained(ref.location, **kwargs)


def load_flux(
    cls: type, ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """Flux: with ``Quantization`` set, quantize the transformer and T5 with optimum-quanto.

    The transformer comes from the user's model (a single file or a folder), the rest of
    the pipeline from ``BFL_REPO``, as LocalAI users configure it.
    """
    if not spec.quantization:
        return default_load(cls, ref, kwargs, spec, settings)
    weights = {"fp8": "qfloat8", "qfloat8": "qfloat8", "int8": "qint8", "qint8": "qint8",
               "int4": "qint4", "qint4": "qint4"}.get(spec.quantization.lower())
    if weights is None:
        raise LoadError(
            f"unknown quantization {spec.quantization!r} for Flux; use fp8, int8 or int4"
        )
    try:
        from optimum import quanto
    except ImportError:
        raise LoadError(
            "quantization for Flux needs optimum-quanto: pip install optimum-quanto"
        ) from None
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    qtype = getattr(quanto, weights)
    dtype = kwargs.get("torch_dtype")
    if ref.kind is RefKind.SINGLE_FILE:
        transformer = FluxTransformer2DModel.from_single_file(ref.location, torch_dtype=dtype)
    else:
        transformer = FluxTransformer2DModel.from_pretrained(
            ref.location, subfolder="transformer", torch_dtype=dtype
        )
    quanto.quantize(transformer, weights=qtype)
    quanto.freeze(transformer)
    text_encoder_2 = T5EncoderModel.from_pretrained(
        settings.bfl_repo, subfolder="text_encoder_2", torch_dtype=dtype
    )
    quanto.quantize(text_encoder_2, weights=qtype)
    quanto.freeze(text_encoder_2)
    base_kwargs = {k: v for k, v in kwargs.items() if k != "variant"}
    pipe = cls.from_pretrained(
        settings.bfl_repo, transformer=None, text_encoder_2=None, **base_kwargs
    )
    pipe.transformer = transformer
    pipe.text_encoder_2 = text_encoder_2
    log.info("Flux transformer and T5 encoder quantized to %s (optimum-quanto), base %s",
             weights, settings.bfl_repo)
    return pipe


def load_wan(
    cls: type, ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """Wan: keep the VAE in float32 (bf16/fp16 VAEs visibly degrade Wan's video)."""
    if ref.kind is RefKind.SINGLE_FILE:
        return default_load(cls, ref, kwargs, spec, settings)
    import torch
    from diffusers import AutoencoderKLWan

    extra = {k: v for k, v in kwargs.items() if k in {"revision", "use_safetensors"}}
    vae = AutoencoderKLWan.from_pretrained(
        ref.location, subfolder="vae", torch_dtype=torch.float32, **extra
    )
    return cls.from_pretrained(ref.location, vae=vae, **kwargs)


def load_sana(
    cls: type, ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """Sana: published with bf16 weights; load them in bf16 unless a dtype was chosen."""
    import torch

    explicit_dtype = "torch_dtype" in spec.options or bool(spec.dtype.strip())
    if not explicit_dtype:
        kwargs = {**kwargs, "torch_dtype": torch.bfloat16}
    pipe = default_load(cls, ref, kwargs, spec, settings)
    dtype = kwargs["torch_dtype"]
    for name in ("vae", "text_encoder"):
        component = getattr(pipe, name, None)
        if component is not None:
            component.to(dtype)
    return pipe


def load_svd(
    cls: type, ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """Stable Video Diffusion: chunk the UNet's feed-forward, as diffusers advises for SVD.

    Its temporal UNet holds activations for every frame at once; chunking trades a little
    speed for a much lower memory peak. (Its call takes an image and no prompt: the
    generation side passes only the arguments a pipeline's call accepts.)
    """
    pipe = default_load(cls, ref, kwargs, spec, settings)
    unet = getattr(pipe, "unet", None)
    if unet is not None and hasattr(unet, "enable_forward_chunking"):
        unet.enable_forward_chunking()
    return pipe


SPECIAL_LOADERS: dict[str, Loader] = {
    "FluxPipeline": load_flux,
    "FluxImg2ImgPipeline": load_flux,
    "FluxInpaintPipeline": load_flux,
    "WanPipeline": load_wan,
    "WanImageToVideoPipeline": load_wan,
    "WanVideoToVideoPipeline": load_wan,
    "SanaPipeline": load_sana,
    "SanaSprintPipeline": load_sana,
    "StableVideoDiffusionPipeline": load_svd,
}


def loader_for(class_name: str) -> Loader:
    """The loader registered for a pipeline class, else :func:`default_load`."""
    return SPECIAL_LOADERS.get(class_name, default_load)

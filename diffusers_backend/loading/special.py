"""The few pipeline families that need more than ``from_pretrained``.

Every other pipeline loads through :func:`default_load`. A special case is one small
function registered in :data:`SPECIAL_LOADERS` under the pipeline class names it serves;
:data:`COMPONENT_LOADERS` adds ``pipeline_type`` values that name a diffusers model class
(LocalAI's ``FluxTransformer2DModel``) and build the pipeline around it. Each one runs in the
tests on a tiny real pipeline of its family (tests/tiny_image_models, tiny_video_models).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.model_ref import ModelRef, RefKind, resolve_reference
from diffusers_backend.loading.precision_variant import load_variant
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.loading.weight_guard import strict, with_strict
from diffusers_backend.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[type[Any], ModelRef, dict[str, Any], LoadSpec, Settings], Any]


def default_load(
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
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


_QUANTO_WEIGHTS = {"fp8": "qfloat8", "qfloat8": "qfloat8", "int8": "qint8", "qint8": "qint8",
                   "int4": "qint4", "qint4": "qint4"}
# ``Quantization`` values that keep full-precision weights where quantizing is the default.
_NO_QUANTIZATION = frozenset({"none", "no", "off"})


def _quanto_weights(quantization: str) -> str:
    """optimum-quanto weight type for a ``Quantization`` value; unknown values fail by name."""
    weights = _QUANTO_WEIGHTS.get(quantization.strip().lower())
    if weights is None:
        raise LoadError(
            f"unknown quantization {quantization!r} for Flux; use fp8, int8 or int4"
        )
    return weights


def _quanto() -> Any:
    """optimum.quanto, or a LoadError saying what to install (checked before any weights load)."""
    try:
        from optimum import quanto
    except ImportError:
        raise LoadError(
            "quantization for Flux needs optimum-quanto: pip install optimum-quanto"
        ) from None
    return quanto


def _quantize(module: Any, weights: str) -> None:
    """Quantize ``module``'s weights in place with optimum-quanto and freeze them."""
    quanto = _quanto()
    quanto.quantize(module, weights=getattr(quanto, weights))
    quanto.freeze(module)


def _check_cpu_quantization(weights: str | None, dtype: Any, spec: LoadSpec,
                            settings: Settings) -> None:
    """Refuse what crashes: optimum-quanto's CPU kernels segfault on qint8 weights with
    bfloat16 activations (0.2.7, measured here), which would kill the whole server."""
    import torch

    from diffusers_backend.loading.placement import pick_device

    if weights != "qint8" or dtype != torch.bfloat16 or pick_device(spec, settings) != "cpu":
        return
    raise LoadError(
        "int8 quantization with bfloat16 crashes optimum-quanto on CPU; on CPU use "
        "quantization fp8, or the option torch_dtype:fp32"
    )


def _transformer_config_source(kwargs: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Where ``from_single_file`` reads a Flux transformer's config.

    The ``config`` option first, then ``BFL_REPO`` when it is a local folder (the same
    architecture, on disk: works offline); else nothing, and diffusers infers the config from
    the checkpoint's keys (dev or schnell) and fetches it from the Hub, as LocalAI does.
    """
    config = kwargs.get("config")
    if not config and Path(settings.bfl_repo).expanduser().is_dir():
        config = str(Path(settings.bfl_repo).expanduser())
    if not config:
        return {}
    flat = (Path(config) / "config.json").is_file()  # a transformer folder, not a pipeline
    return {"config": config} if flat else {"config": config, "subfolder": "transformer"}


def _load_flux_transformer_weights(ref: ModelRef, dtype: Any, kwargs: dict[str, Any],
                                   settings: Settings) -> Any:
    """The Flux transformer of ``ref``: a single file, a transformer folder or a Flux folder."""
    from diffusers import FluxTransformer2DModel

    if ref.kind is RefKind.SINGLE_FILE:
        return FluxTransformer2DModel.from_single_file(
            ref.location, torch_dtype=dtype, **_transformer_config_source(kwargs, settings))
    folder = Path(ref.location)
    if ref.kind is RefKind.FOLDER and (folder / "config.json").is_file() and not (
        folder / "model_index.json"
    ).is_file():
        return FluxTransformer2DModel.from_pretrained(ref.location, torch_dtype=dtype)
    return FluxTransformer2DModel.from_pretrained(ref.location, subfolder="transformer",
                                                  torch_dtype=dtype)


def _flux_on_base(pipeline_cls: type[Any], transformer: Any, dtype: Any, weights: str | None,
                  kwargs: dict[str, Any], settings: Settings) -> Any:
    """A Flux pipeline from ``BFL_REPO`` around ``transformer``; T5 quantized like it."""
    from transformers import T5EncoderModel

    if weights:
        _quantize(transformer, weights)
    text_encoder_2 = T5EncoderModel.from_pretrained(
        settings.bfl_repo, subfolder="text_encoder_2", torch_dtype=dtype,
        **strict(settings.safetensors_only)
    )
    if weights:
        _quantize(text_encoder_2, weights)
    # config/original_config describe the user's file, variant its repo: not the base's.
    base_kwargs = {k: v for k, v in kwargs.items()
                   if k not in {"variant", "config", "original_config"}}
    base_kwargs["torch_dtype"] = dtype
    base_kwargs = with_strict(base_kwargs, settings.safetensors_only)
    pipe = pipeline_cls.from_pretrained(
        settings.bfl_repo, transformer=None, text_encoder_2=None, **base_kwargs
    )
    pipe.transformer = transformer
    pipe.text_encoder_2 = text_encoder_2
    log.info("Flux transformer and T5 encoder %s, base %s",
             f"quantized to {weights} (optimum-quanto)" if weights else "not quantized",
             settings.bfl_repo)
    return pipe


def load_flux(
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """Flux: with ``Quantization`` set, quantize the transformer and T5 with optimum-quanto.

    The transformer comes from the user's model (a single file or a folder), the rest of
    the pipeline from ``BFL_REPO``, as LocalAI users configure it.
    """
    if not spec.quantization:
        return default_load(cls, ref, kwargs, spec, settings)
    weights = _quanto_weights(spec.quantization)
    _quanto()
    dtype = kwargs.get("torch_dtype")
    _check_cpu_quantization(weights, dtype, spec, settings)
    transformer = _load_flux_transformer_weights(ref, dtype, kwargs, settings)
    return _flux_on_base(cls, transformer, dtype, weights, kwargs, settings)


def load_flux_transformer(
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """``pipeline_type: FluxTransformer2DModel`` (LocalAI's name): the model is a Flux
    transformer alone, and a FluxPipeline is built around it.

    The transformer is ModelFile (a single file, a transformer folder, or a Flux folder's
    ``transformer/``); text encoders, VAE and scheduler come from ``BFL_REPO``. Transformer
    and T5 are quantized to qfloat8 with optimum-quanto, as LocalAI does, unless
    ``Quantization`` names another type (fp8, int8, int4) or ``none``. The dtype is bfloat16,
    as in LocalAI (f16 too: Flux is published and run in bfloat16), unless the ``torch_dtype``
    option or ``DType`` sets one.
    """
    import torch
    from diffusers import FluxPipeline

    wanted = spec.quantization.strip().lower() or "fp8"
    weights = None if wanted in _NO_QUANTIZATION else _quanto_weights(wanted)
    if weights:
        _quanto()
    dtype = getattr(torch, spec.torch_dtype_name()) if spec.explicit_dtype else torch.bfloat16
    _check_cpu_quantization(weights, dtype, spec, settings)
    transformer = _load_flux_transformer_weights(ref, dtype, kwargs, settings)
    return _flux_on_base(FluxPipeline, transformer, dtype, weights, kwargs, settings)


def load_wan(
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
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
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """Sana: published with bf16 weights; load them in bf16 unless a dtype was chosen, from
    the ``bf16`` variant files where the repo has them (as LocalAI loads Sana)."""
    import torch

    if not spec.explicit_dtype:
        kwargs = {**kwargs, "torch_dtype": torch.bfloat16}
    pipe = load_variant(lambda chosen: default_load(cls, ref, chosen, spec, settings), kwargs,
                        "bf16", ref, spec)
    dtype = kwargs["torch_dtype"]
    for name in ("vae", "text_encoder"):
        component = getattr(pipe, name, None)
        if component is not None:
            component.to(dtype)
    return pipe


def load_svd(
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
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


def is_gguf(ref: ModelRef) -> bool:
    """Whether ``ref`` is a GGUF file: a quantized transformer alone, never a whole pipeline."""
    return ref.kind is RefKind.SINGLE_FILE and ref.location.lower().endswith(".gguf")


def gguf_base_ref(spec: LoadSpec, settings: Settings) -> ModelRef:
    """Where a ``.gguf`` transformer's pipeline (text encoders, VAE, scheduler, configs)
    comes from: the ``gguf_base`` option (a diffusers folder, absolute or under the models
    folder, or a Hub id); for Flux ``pipeline_type`` values, ``BFL_REPO`` by default, as
    for LocalAI's FluxTransformer2DModel."""
    base = str(spec.options.get("gguf_base", "")).strip()
    if base:
        return resolve_reference(base, spec.model_path, "gguf_base")
    if spec.pipeline_type.strip().lower().startswith("flux"):
        return resolve_reference(settings.bfl_repo, spec.model_path, "BFL_REPO")
    raise LoadError(
        "a .gguf file holds only a quantized transformer: name the pipeline it belongs to "
        "with the option gguf_base:<diffusers folder under the models path, or Hub id> "
        "(e.g. gguf_base:black-forest-labs/FLUX.1-dev); Flux pipeline_types default to "
        "BFL_REPO"
    )


def _gguf_denoiser(cls: type[Any], base: str) -> tuple[str, type[Any]]:
    """The component a GGUF file replaces in ``cls`` (``transformer``, else ``unet``) and its
    diffusers model class, as the base's model_index.json names it."""
    import inspect

    import diffusers

    parameters = inspect.signature(cls.__init__).parameters
    name = next((n for n in ("transformer", "unet") if n in parameters), None)
    if name is None:
        raise LoadError(f"{cls.__name__} has no transformer or unet for a .gguf file to fill")
    index = diffusers.DiffusionPipeline.load_config(base)
    class_name = (index.get(name) or [None, None])[1]
    model_cls = getattr(diffusers, str(class_name), None)
    if model_cls is None or not hasattr(model_cls, "from_single_file"):
        raise LoadError(
            f"{class_name or name} (the {name} of {base}) cannot be read from a single .gguf "
            f"file by diffusers {diffusers.__version__}"
        )
    return name, model_cls


def load_gguf(
    cls: type[Any], ref: ModelRef, kwargs: dict[str, Any], spec: LoadSpec, settings: Settings
) -> Any:
    """A GGUF transformer (city96-style quantized Flux, Wan, LTX, SD 3.5, Qwen-Image, Chroma
    files) inside the pipeline of :func:`gguf_base_ref`.

    The file is read by diffusers' GGUF quantizer: its quantized tensors (Q8_0, Q4_K...)
    stay quantized in memory and are dequantized layer by layer while computing in
    ``torch_dtype`` (F16/BF16/F32 tensors load as plain weights). The transformer's config
    comes from the ``config`` option, else from the base's ``transformer/`` folder. No
    optimum-quanto pass: the weights are quantized already.
    """
    try:
        import gguf  # noqa: F401 - diffusers imports it lazily; fail here, by name
    except ImportError:
        raise LoadError("loading a .gguf file needs the gguf package: pip install gguf") from None
    from diffusers import FluxPipeline, GGUFQuantizationConfig

    if cls.__name__ in COMPONENT_LOADERS:  # pipeline_type: FluxTransformer2DModel
        cls = FluxPipeline
    base = gguf_base_ref(spec, settings).location
    component, model_cls = _gguf_denoiser(cls, base)
    dtype = kwargs.get("torch_dtype")
    config = kwargs.get("config")
    source = {"config": config} if config else {"config": base, "subfolder": component}
    denoiser = model_cls.from_single_file(
        ref.location, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        torch_dtype=dtype, **source)
    base_kwargs = with_strict({k: v for k, v in kwargs.items()
                               if k not in {"config", "original_config"}},
                              settings.safetensors_only)
    if SPECIAL_LOADERS.get(cls.__name__) is load_wan:  # Wan's VAE stays float32 (load_wan)
        import torch
        from diffusers import AutoencoderKLWan

        extra = {k: v for k, v in base_kwargs.items() if k in {"revision", "use_safetensors"}}
        base_kwargs["vae"] = AutoencoderKLWan.from_pretrained(
            base, subfolder="vae", torch_dtype=torch.float32, **extra)
    log.info("GGUF %s %s (computing in %s), pipeline %s from %s", component,
             model_cls.__name__, dtype, cls.__name__, base)
    return cls.from_pretrained(base, **{component: denoiser}, **base_kwargs)


# pipeline_type values naming a diffusers *model* class rather than a pipeline (LocalAI's
# FluxTransformer2DModel): their loader builds the whole pipeline around that model.
COMPONENT_LOADERS: dict[str, Loader] = {
    "FluxTransformer2DModel": load_flux_transformer,
}

SPECIAL_LOADERS: dict[str, Loader] = {
    **COMPONENT_LOADERS,
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


def component_class(name: str) -> type[Any] | None:
    """The diffusers model class a ``pipeline_type`` names, when a loader here builds a
    pipeline around it (case-insensitive, like pipeline names); else None."""
    found = {key.lower(): key for key in COMPONENT_LOADERS}.get(name.strip().lower())
    if found is None:
        return None
    import diffusers

    found_class: type[Any] = getattr(diffusers, found)
    return found_class

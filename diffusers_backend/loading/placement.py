"""Where a pipeline runs and how it saves memory: device, dtype, offload, slicing, tiling.

GPU-only modes (offload, device maps) become no-ops with a log line on CPU, so one model
YAML works on both kinds of host.
"""

from __future__ import annotations

import logging
from typing import Any

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings

log = logging.getLogger(__name__)


def pick_device(spec: LoadSpec, settings: Settings) -> str:
    """cuda when asked and present, xpu when XPU=1, mps on Apple, else cpu."""
    import torch

    if settings.xpu:
        if hasattr(torch, "xpu") and torch.xpu.is_available():
            return "xpu"
        log.warning("XPU=1 but no Intel XPU is available; running on CPU")
    if spec.cuda:
        if torch.cuda.is_available():
            return "cuda"
        log.warning("cuda: true in the model YAML but no CUDA device is available; running on CPU")
        return "cpu"
    if torch.cuda.is_available():
        log.info("a CUDA device is present but the model YAML does not set cuda: true; using CPU")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def torch_dtype(spec: LoadSpec) -> Any:
    """The torch dtype object for the spec (raises LoadError on an unknown name)."""
    import torch

    return getattr(torch, spec.torch_dtype_name())


def _truthy(options: dict[str, Any], *keys: str) -> bool:
    return any(bool(options.get(k)) for k in keys)


_MODEL_OFFLOAD_KEYS = ("cpu_offload", "model_cpu_offload", "enable_model_cpu_offload")
# Families LocalAI's backend always loads with model CPU offload (unless DISABLE_CPU_OFFLOAD):
# their video activations need the GPU memory the idle components would hold.
OFFLOADED_BY_DEFAULT = frozenset({"StableVideoDiffusionPipeline", "LTX2Pipeline",
                                  "LTX2ImageToVideoPipeline"})


def offloads_by_default(pipe: Any, options: dict[str, Any]) -> bool:
    """SVD and LTX-2 offload unless the YAML switches it off (``cpu_offload:false``)."""
    said_no = any(key in options and not options[key] for key in _MODEL_OFFLOAD_KEYS)
    return type(pipe).__name__ in OFFLOADED_BY_DEFAULT and not said_no


def apply_memory_modes(pipe: Any, spec: LoadSpec, settings: Settings, device: str) -> str:
    """Place the pipeline and apply memory options; return a short description for logs.

    - ``LowVRAM`` / options ``cpu_offload``, ``model_cpu_offload``: model CPU offload
      (whole components move to the GPU in turn). SVD and LTX-2 get it by default, as
      in LocalAI (``cpu_offload:false`` keeps them whole on the GPU). Needs a GPU
      (cuda/xpu); elsewhere a no-op with a log line.
    - options ``sequential_cpu_offload``: layer-by-layer offload, slowest and leanest.
      Needs a GPU; elsewhere a no-op with a log line. Both are off with
      ``DISABLE_CPU_OFFLOAD=1``.
    - options ``attention_slicing``, ``vae_slicing``, ``vae_tiling``: applied on every
      device (they save memory on CPU too), and named in the "loaded ..." log line.
    - option ``attention_backend``: ``set_attention_backend`` on the UNet/transformer
      (e.g. ``flash``, ``native``); which backends work depends on the device.
    """
    opts = spec.load_options
    notes: list[str] = []
    on_gpu = device in {"cuda", "xpu"}
    wants_sequential = _truthy(
        opts, "sequential_cpu_offload", "enable_sequential_cpu_offload"
    )
    wants_model_offload = (spec.low_vram or _truthy(opts, *_MODEL_OFFLOAD_KEYS)
                           or offloads_by_default(pipe, opts))
    if settings.disable_cpu_offload and (wants_sequential or wants_model_offload):
        notes.append("offload requested but DISABLE_CPU_OFFLOAD=1")
        wants_sequential = wants_model_offload = False
    placed = getattr(pipe, "hf_device_map", None) is not None
    if placed:
        notes.append(f"spread over devices: {pipe.hf_device_map}")
    elif on_gpu and wants_sequential:
        pipe.enable_sequential_cpu_offload(device=device)
        notes.append("sequential CPU offload")
    elif on_gpu and wants_model_offload:
        pipe.enable_model_cpu_offload(device=device)
        notes.append("model CPU offload")
    else:
        if wants_sequential or wants_model_offload:
            log.info("CPU offload only applies on a GPU; ignored on %s", device)
        pipe.to(device)
    if _truthy(opts, "attention_slicing", "enable_attention_slicing"):
        if hasattr(pipe, "enable_attention_slicing"):
            pipe.enable_attention_slicing()
            notes.append("attention slicing")
    vae = getattr(pipe, "vae", None)
    if _truthy(opts, "vae_slicing", "enable_vae_slicing") and vae is not None:
        if hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
            notes.append("VAE slicing")
    if _truthy(opts, "vae_tiling", "enable_vae_tiling") and vae is not None:
        if hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
            notes.append("VAE tiling")
    backend = opts.get("attention_backend")
    if backend:
        transformer = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        if transformer is None or not hasattr(transformer, "set_attention_backend"):
            raise LoadError(f"attention_backend {backend!r}: this pipeline cannot switch backends")
        transformer.set_attention_backend(str(backend))
        notes.append(f"attention backend {backend}")
    return ", ".join(notes) or f"on {device}"


def device_map_kwargs(spec: LoadSpec, device: str) -> dict[str, Any]:
    """``TensorParallelSize > 1`` spreads the pipeline over the GPUs with a device map.

    Needs two or more CUDA GPUs; otherwise a no-op with a log line.
    """
    if spec.tensor_parallel_size <= 1:
        return {}
    if device != "cuda":
        log.info("tensor_parallel_size=%d needs CUDA GPUs; ignored on %s",
                 spec.tensor_parallel_size, device)
        return {}
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        log.info("tensor_parallel_size=%d but only %d GPU is visible; ignored",
                 spec.tensor_parallel_size, count)
        return {}
    return {"device_map": "balanced"}

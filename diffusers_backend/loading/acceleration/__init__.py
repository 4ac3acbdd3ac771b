"""Opt-in speed options of a model YAML, applied after placement and warmed up inside
LoadModel, so the first request is not the one that pays for compilation.

```yaml
options:
  - "cache:taylorseer"             # or first_block, faster, pab (transformers), deepcache (UNets)
  - "cache_interval:5"             # interval caches; first_block takes cache_threshold:0.05
  - "quantize:int8wo"              # torchao int8 weights (CPU and GPU); fp8 on Ada/Hopper GPUs
  - "compile_regional:true"        # torch.compile the repeated blocks only (fast warm-up)
  - "compile:true"                 # torch.compile the whole denoiser (UNet / transformer)
  - "compile_mode:max-autotune-no-cudagraphs"   # default: "default"
  - "channels_last:true"           # NHWC memory format for UNet and VAE convolutions
  - "fuse_qkv:true"                # one fused QKV projection per attention block
```

Order: fused QKV, channels-last, quantization, cache hooks, compilation (quantized weights
and hooks are what gets compiled). Each part lives in its own module: :mod:`caches`
(diffusers' cache hooks and :mod:`unet_cache`), :mod:`quantize` (torchao), :mod:`compile`
(whole or regional, persistent compile cache). docs/acceleration.md has the measured table.

Modes (torch's inductor): ``default`` compiles fastest; ``reduce-overhead`` adds CUDA graphs
(best when sizes and batch sizes repeat, re-captured for each new shape);
``max-autotune-no-cudagraphs`` benchmarks kernels (slow to compile); ``max-autotune``
does both and took over 6 minutes on an H100 for SD 1.5, so it is allowed but not advised.
``compile_backend`` picks another torch.compile backend (``eager``/``aot_eager`` check the
wiring without code generation).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from diffusers_backend.loading import lora_hotswap
from diffusers_backend.loading.acceleration.caches import apply_cache, reset_cache_state
from diffusers_backend.loading.acceleration.compile import compile_denoiser
from diffusers_backend.loading.acceleration.quantize import quantize_denoiser
from diffusers_backend.loading.options_table import validate_options
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)

WARM_UP_STEPS = 2


def _gguf_model(spec: LoadSpec) -> bool:
    return any(ref.lower().endswith(".gguf") for ref in (spec.model, spec.model_file))


def apply_speed_options(pipe: Any, spec: LoadSpec) -> list[str]:
    """Apply the speed options the spec asks for, in a working order; notes for logs."""
    options = spec.options
    validate_options(options)  # a typo in a mode would otherwise compile silently
    notes: list[str] = []
    if options.get("fuse_qkv"):
        if hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
            notes.append("fused QKV")
        else:
            log.warning("fuse_qkv: %s has no fused QKV projections; ignored",
                        type(pipe).__name__)
    if options.get("channels_last"):
        import torch

        for name in ("unet", "vae", "controlnet"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
        notes.append("channels-last")
    if options.get("quantize"):
        quantization = spec.quantization or ("gguf" if _gguf_model(spec) else "")
        notes.append(quantize_denoiser(pipe, str(options["quantize"]), quantization))
    if options.get("cache") not in (None, "none", False):
        notes.append(apply_cache(pipe, options))
    if options.get("compile") or options.get("compile_regional"):
        notes += [note for note in [lora_hotswap.prepare(pipe, spec)] if note]
        notes.append(compile_denoiser(pipe, options))
    return notes


def needs_warm_up(spec: LoadSpec) -> bool:
    return bool(spec.options.get("compile") or spec.options.get("compile_regional"))


def warm_up(pipe: Any, spec: LoadSpec) -> float:
    """One short call at the model's default size, so compilation happens inside LoadModel.

    Returns the seconds it took (0 when nothing needs warming up).
    """
    if not needs_warm_up(spec):
        return 0.0
    import torch

    from diffusers_backend.registry.signatures import call_signature

    started = time.perf_counter()
    params = call_signature(type(pipe)).params
    kwargs: dict[str, Any] = {"num_inference_steps": WARM_UP_STEPS,
                              "generator": torch.Generator("cpu").manual_seed(0)}
    if "prompt" in params:
        kwargs["prompt"] = "warm-up"
    for key in ("width", "height"):
        value = spec.options.get(key)
        if isinstance(value, int) and key in params:
            kwargs[key] = value
    if "output_type" in params:
        kwargs["output_type"] = "latent"  # the denoiser is what was compiled
    pipe(**kwargs)  # under the pipeline's own no_grad, as every served call
    reset_cache_state(pipe)
    return time.perf_counter() - started

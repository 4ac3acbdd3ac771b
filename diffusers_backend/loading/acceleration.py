"""Opt-in speed options of a model YAML, applied after placement and warmed up inside
LoadModel, so the first request is not the one that pays for compilation.

```yaml
options:
  - "compile:true"                 # torch.compile the denoiser (UNet / transformer)
  - "compile_mode:max-autotune-no-cudagraphs"   # default: "default"
  - "channels_last:true"           # NHWC memory format for UNet and VAE convolutions
  - "fuse_qkv:true"                # one fused QKV projection per attention block
```

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

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.options_table import validate_options
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)

WARM_UP_STEPS = 2


def _denoiser(pipe: Any) -> tuple[str, Any]:
    for name in ("transformer", "unet", "prior"):
        module = getattr(pipe, name, None)
        if module is not None:
            return name, module
    return "", None


def apply_speed_options(pipe: Any, spec: LoadSpec) -> list[str]:
    """Apply channels-last, fused QKV and torch.compile as the options ask; notes for logs."""
    options = spec.options
    validate_options(options)  # a typo in a mode would otherwise compile silently
    notes: list[str] = []
    if options.get("channels_last"):
        import torch

        for name in ("unet", "vae", "controlnet"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
        notes.append("channels-last")
    if options.get("fuse_qkv"):
        if hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
            notes.append("fused QKV")
        else:
            log.warning("fuse_qkv: %s has no fused QKV projections; ignored",
                        type(pipe).__name__)
    if options.get("compile"):
        name, module = _denoiser(pipe)
        if module is None:
            raise LoadError(f"compile: {type(pipe).__name__} has no UNet or transformer")
        backend = str(options.get("compile_backend", "inductor"))
        mode = options.get("compile_mode", "default") if backend == "inductor" else None
        module.compile(backend=backend, mode=mode,
                       fullgraph=bool(options.get("compile_fullgraph", False)))
        notes.append(f"{name} compiled ({backend}" + (f", {mode}" if mode else "") + ")")
    return notes


def warm_up(pipe: Any, spec: LoadSpec) -> float:
    """One short call at the model's default size, so compilation happens inside LoadModel.

    Returns the seconds it took (0 when nothing needs warming up).
    """
    if not spec.options.get("compile"):
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
    return time.perf_counter() - started

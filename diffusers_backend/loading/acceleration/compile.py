"""torch.compile of the denoiser (``compile:true``) or of its repeated blocks only
(``compile_regional:true``), with a compile cache that outlives the process.

Regional compilation compiles one transformer block class once and reuses the code for
every instance (diffusers' ``compile_repeated_blocks``), so warming up takes a fraction of
compiling the whole model at almost the same speed.

The compile cache: inductor's FX-graph and AOTAutograd caches are written under
``TORCHINDUCTOR_CACHE_DIR``; we point it at ``DIFFUSERS_COMPILE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/localai-diffusers/torch-compile``, else ``~/.cache/...``) unless the user
set ``TORCHINDUCTOR_CACHE_DIR`` himself, so the next start of the same model (or the same
model with another LoRA) finds its kernels instead of generating and compiling them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers_backend.errors import LoadError

COMPILE_CACHE_ENV = "DIFFUSERS_COMPILE_CACHE_DIR"
# Tests: "1" makes any dynamo recompile an error (a served request fails instead of paying a
# silent recompile), so a test proves that LoRA hot-swaps keep the compiled code.
ERROR_ON_RECOMPILE_ENV = "DIFFUSERS_COMPILE_ERROR_ON_RECOMPILE"


def compile_cache_dir() -> Path:
    """Where compiled kernels are kept between starts."""
    configured = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "localai-diffusers" / "torch-compile"


def use_compile_cache() -> Path:
    """Point inductor's on-disk caches at :func:`compile_cache_dir` (an explicit
    ``TORCHINDUCTOR_CACHE_DIR`` wins) and return the folder in use."""
    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").strip()
    if explicit and not os.environ.get(COMPILE_CACHE_ENV, "").strip():
        return Path(explicit)
    folder = compile_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoadError(f"compile cache folder {folder} cannot be created ({exc}); set "
                        f"{COMPILE_CACHE_ENV} to a writable folder") from exc
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def error_on_recompile_here() -> None:
    """Under ``DIFFUSERS_COMPILE_ERROR_ON_RECOMPILE=1``, make a recompile an error in the
    calling thread (dynamo's config set in one thread is not seen in another, so the thread
    that runs the pipeline calls this; see tasks/lora_call.py)."""
    if os.environ.get(ERROR_ON_RECOMPILE_ENV, "").strip() == "1":
        import torch._dynamo

        torch._dynamo.config.error_on_recompile = True


def denoiser(pipe: Any) -> tuple[str, Any]:
    """The pipeline's UNet / transformer / prior, with its attribute name."""
    for name in ("transformer", "unet", "prior"):
        module = getattr(pipe, name, None)
        if module is not None:
            return name, module
    return "", None


def compile_denoiser(pipe: Any, options: dict[str, Any]) -> str:
    """``compile`` / ``compile_regional``: compile the whole denoiser or its repeated blocks."""
    name, module = denoiser(pipe)
    regional = bool(options.get("compile_regional"))
    key = "compile_regional" if regional else "compile"
    if module is None:
        raise LoadError(f"{key}: {type(pipe).__name__} has no UNet or transformer")
    if regional and not getattr(module, "_repeated_blocks", None):
        raise LoadError(f"compile_regional: {type(module).__name__} declares no repeated "
                        "blocks to compile; use compile:true to compile it whole")
    backend = str(options.get("compile_backend", "inductor"))
    mode = options.get("compile_mode", "default") if backend == "inductor" else None
    kwargs = {"backend": backend, "mode": mode,
              "fullgraph": bool(options.get("compile_fullgraph", False))}
    folder = use_compile_cache() if backend == "inductor" else None
    error_on_recompile_here()
    if regional:
        module.compile_repeated_blocks(**kwargs)
        blocks = ", ".join(module._repeated_blocks)  # noqa: SLF001 - diffusers' declared list
        what = f"{name} blocks {blocks} compiled"
    else:
        module.compile(**kwargs)
        what = f"{name} compiled"
    details = backend + (f", {mode}" if mode else "") + (f", cache {folder}" if folder else "")
    return f"{what} ({details})"

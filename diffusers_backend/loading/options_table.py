"""Every ``options:`` key of a model YAML, once: when it applies (while loading, or as a
default of every pipeline call), what its value is, which pipelines it concerns, and the
check that refuses a value we cannot use.

Load-time validation, the split into load and call options, the "unknown option" warning
(with its did-you-mean) and the option table in docs/configuration.md all come from
:data:`OPTIONS`; a unit test fails when that page and this table disagree.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from diffusers_backend.errors import LoadError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
CACHE_NAMES = ("first_block", "taylorseer", "faster", "pab", "deepcache")  # acceleration/caches
QUANTIZE_MODES = ("int8wo", "fp8")  # acceleration/quantize


class Phase(str, Enum):
    """When an option applies."""

    LOAD = "load"  # consumed while loading (from_pretrained kwargs, pipeline toggles)
    CALL = "call"  # a default keyword argument of every pipeline call that takes it


Check = Callable[[str, Any], None]  # (key, value) -> None, or LoadError


@dataclass(frozen=True)
class Option:
    """One YAML option key (and the other spellings LocalAI's docs use for it)."""

    key: str
    phase: Phase
    value: str  # what the value is, as the docs show it
    doc: str
    pipelines: str = "all"
    also: tuple[str, ...] = ()  # other spellings of the same option
    check: Check | None = None
    from_pretrained: bool = False  # passed unchanged to from_pretrained / from_single_file
    # A value that names something on disk: "weights" (a model, adapter or annotator folder
    # or file: confined, regular, SAFETENSORS applies) or "config" (a config file or folder:
    # confined, regular). load_plan.resolve puts every such option in the plan's paths() and
    # load_guard.guard checks each one,
    # so a new path option is guarded by being declared, not by remembering a call.
    path: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.also)


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise LoadError(f"option {key} must be true or false, got {value!r}")


_IP_ADAPTER = "SD 1.x/2.x, SDXL, Flux, SD3"


def _number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoadError(f"option {key} must be a number, got {value!r}")


def _compile_mode(_key: str, value: Any) -> None:
    if value not in COMPILE_MODES:
        raise LoadError(f"unknown compile_mode {value!r}; use one of {', '.join(COMPILE_MODES)}")


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            raise LoadError(f"unknown {key} {value!r}; use one of {', '.join(choices)}")
    return check


def _steps(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoadError(f"option {key} must be a whole number of steps >= 1, got {value!r}")


def _count(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoadError(f"option {key} must be a whole number >= 1, got {value!r}")


def _threshold(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 10:
        raise LoadError(f"option {key} must be a number above 0 (e.g. 0.05), got {value!r}")


_L, _C = Phase.LOAD, Phase.CALL
_GPU = "all (GPU only: a no-op with a log line on CPU)"
_DENOISER = "with a UNet or transformer"
_NO_EFFECT = "accepted for LocalAI model files; no effect here"

OPTIONS: tuple[Option, ...] = (
    # -- loading: what from_pretrained / from_single_file reads
    Option("torch_dtype", _L, "`fp16`, `bf16`, `fp32`", "compute dtype; wins over `dtype` "
           "and `f16`; an unknown word (`auto`) is ignored with a warning"),
    Option("variant", _L, "string", "weights variant (`fp16` reads `*.fp16.safetensors`)",
           from_pretrained=True),
    Option("use_safetensors", _L, "bool", "load only (or never) `.safetensors` weights",
           from_pretrained=True),
    Option("low_cpu_mem_usage", _L, "bool", "diffusers' low-memory loading",
           from_pretrained=True),
    Option("revision", _L, "string", "Hub revision (branch, tag or commit)",
           from_pretrained=True),
    Option("subfolder", _L, "string", "folder inside the repository", from_pretrained=True),
    Option("config", _L, "path or Hub id", "diffusers config of a single-file checkpoint "
           "(relative to the models path)", "single-file checkpoints", from_pretrained=True,
           path="config"),
    Option("original_config", _L, "path or Hub id", "original (LDM) YAML of a single-file "
           "checkpoint", "single-file checkpoints", from_pretrained=True, path="config"),
    Option("trust_remote_code", _L, "bool", "run code from the model repository; only with "
           "`DIFFUSERS_ALLOW_REMOTE_CODE=1`"),
    Option("custom_pipeline", _L, "string", "a community pipeline; only with "
           "`DIFFUSERS_ALLOW_REMOTE_CODE=1`"),
    Option("safety_checker", _L, "bool", "keep the NSFW checker a repository ships (off by "
           "default, as in LocalAI's backend)", "SD 1.x/2.x"),
    Option("gguf_base", _L, "path or Hub id", "the diffusers pipeline a `.gguf` transformer "
           "is loaded into", "GGUF transformers", path="weights"),
    Option("device_map", _L, "string", _NO_EFFECT + " (`tensor_parallel_size` spreads a "
           "pipeline over GPUs)"),
    Option("xformers", _L, "bool", _NO_EFFECT + " (see `attention_backend`)"),
    Option("controlnet_conditioning_scale_default", _L, "number", _NO_EFFECT),
    # -- memory modes (loading/placement.py)
    Option("attention_slicing", _L, "bool", "compute attention in slices (less memory)",
           also=("enable_attention_slicing",)),
    Option("vae_slicing", _L, "bool", "decode a batch one image at a time", "with a VAE",
           also=("enable_vae_slicing",)),
    Option("vae_tiling", _L, "bool", "decode large images in tiles", "with a VAE",
           also=("enable_vae_tiling",)),
    Option("model_cpu_offload", _L, "bool", "move whole components to the GPU in turn "
           "(as `low_vram`)", _GPU, also=("cpu_offload", "enable_model_cpu_offload")),
    Option("sequential_cpu_offload", _L, "bool", "layer-by-layer offload: leanest, slowest",
           _GPU, also=("enable_sequential_cpu_offload",)),
    # -- TensorParallelSize >= 2 (engine/parallel/, docs/parallel.md)
    Option("context_parallel", _L, "`ulysses`, `ring`", "how the context-parallel workers split "
           "attention (ring: CUDA only)", "with a context-parallel plan",
           check=_one_of(("ulysses", "ring"))),
    Option("context_parallel_timeout", _L, "seconds", "how long a worker waits in a collective "
           "before the request fails (default 120)", "with a context-parallel plan"),
    Option("attention_backend", _L, "string", "`set_attention_backend` of the denoiser "
           "(`native`, `flash`...)", _DENOISER),
    # -- ControlNet input preprocessing (media/control.py)
    Option("control_preprocess", _L, "`canny` or `depth`", "turn an ordinary photo into the "
           "control map", "ControlNet"),
    Option("control_annotator", _L, "folder", "local depth-estimation model for "
           "`control_preprocess:depth`", "ControlNet", path="weights"),
    Option("canny_low", _L, "number", "Canny low threshold (default 100)", "ControlNet"),
    Option("canny_high", _L, "number", "Canny high threshold (default 200)", "ControlNet"),
    # -- IP-Adapter (loading/ip_adapter.py)
    Option("ip_adapter", _L, "file or folder", "an IP-Adapter `.safetensors` (a folder: the "
           "one in it); the request's first reference is its picture", _IP_ADAPTER,
           path="weights"),
    Option("ip_adapter_image_encoder", _L, "folder", "its CLIP image encoder (default: "
           "`image_encoder` beside the file)", _IP_ADAPTER, path="weights"),
    Option("ip_adapter_scale", _L, "number", "the adapter's strength when a reference is "
           "sent (default 1.0; 0 without one)", _IP_ADAPTER, check=_number),
    # -- LoRA per request: <lora:NAME:WEIGHT> prompt tags (tasks/lora_call.py)
    Option("lora_dir", _L, "folder", "where prompt tags find `NAME.safetensors`, before the "
           "models folder's `loras/` and the models folder itself (absolute, or under the "
           "models folder)", "with LoRA support", path="weights"),
    Option("lora_cache", _L, "int", "LoRA adapters read for prompt tags kept per model, least "
           "recently used deleted first (default 8)", "with LoRA support", check=_count),
    Option("lora_hotswap_rank", _L, "int", "with `compile` / `compile_regional`: the total "
           "rank of the tags' LoRAs one layer may take per request (default 64; "
           "loading/lora_hotswap.py)", "with LoRA support", check=_count),
    # -- speed (loading/acceleration/compile.py)
    Option("compile", _L, "bool", "`torch.compile` the denoiser, warmed up inside LoadModel",
           _DENOISER, check=_bool),
    Option("compile_mode", _L, ", ".join(f"`{m}`" for m in COMPILE_MODES),
           "inductor mode (default `default`)", _DENOISER, check=_compile_mode),
    Option("compile_backend", _L, "string", "torch.compile backend (default `inductor`)",
           _DENOISER),
    Option("compile_fullgraph", _L, "bool", "compile without graph breaks", _DENOISER,
           check=_bool),
    Option("channels_last", _L, "bool", "NHWC memory format for UNet and VAE convolutions",
           "with a UNet or VAE", check=_bool),
    Option("fuse_qkv", _L, "bool", "one fused QKV projection per attention block",
           "with fused projections", check=_bool),
    # -- acceleration (loading/acceleration/; docs/acceleration.md has the measured table)
    Option("cache", _L, ", ".join(f"`{c}`" for c in CACHE_NAMES), "reuse denoiser outputs "
           "between close steps: `first_block`, `taylorseer`, `faster`, `pab` (diffusers' "
           "hooks), `deepcache` (UNet deep features)", "first_block/taylorseer/faster/pab: "
           "transformers whose pipeline sets a cache context (Flux, Wan, LTX, Qwen-Image...); "
           "deepcache: SD 1.x/2.x, SDXL", check=_one_of(CACHE_NAMES)),
    Option("cache_interval", _L, "int", "full denoiser step every N steps (taylorseer 5, "
           "faster 2, pab 2, deepcache 3)", "with an interval cache", check=_steps),
    Option("cache_threshold", _L, "number", "first_block: reuse while the first block's "
           "relative change is below this (default 0.05)", "with `cache:first_block`",
           check=_threshold),
    Option("quantize", _L, ", ".join(f"`{m}`" for m in QUANTIZE_MODES), "torchao weight "
           "quantization of the denoiser: `int8wo` (CPU and GPU), `fp8` (CUDA compute "
           "capability >= 8.9); refused on GGUF or already quantized weights", _DENOISER,
           check=_one_of(QUANTIZE_MODES)),
    Option("compile_regional", _L, "bool", "`torch.compile` only the repeated blocks "
           "(much faster warm-up); kernels cached in `DIFFUSERS_COMPILE_CACHE_DIR`",
           "denoisers that declare repeated blocks (Flux, Wan, SD UNet...)", check=_bool),
    Option("preview_every", _L, "int", "live previews (`Progress.Watch` with `previews`): one "
           "every N denoising steps, and at the last (default 1; docs/observability.md)",
           check=_steps),
    Option("preview_decoder", _L, "folder", "a local `AutoencoderTiny` (TAESD-like) folder "
           "live previews are decoded with instead of the linear latent-to-RGB map",
           "with a VAE whose latent channels it decodes", path="weights"),
    # -- call options the backend itself reads; every other key is passed through as well
    Option("cfg_scale", _C, "number", "guidance scale (LocalAI's docs' spelling); an "
           "explicit `guidance_scale` option wins"),
    Option("guidance_scale", _C, "number", "guidance scale; wins over the `cfg_scale` option "
           "and the YAML's `cfg_scale`"),
    Option("num_inference_steps", _C, "int", "steps when the request gives none"),
    Option("width", _C, "int", "width when the request gives none"),
    Option("height", _C, "int", "height when the request gives none"),
)

BY_KEY: dict[str, Option] = {key: opt for opt in OPTIONS for key in opt.keys}
PATH_ROLES = ("weights", "config")
PATH_OPTIONS: tuple[Option, ...] = tuple(opt for opt in OPTIONS if opt.path)
LOAD_TIME_OPTION_KEYS = frozenset(k for k, opt in BY_KEY.items() if opt.phase is Phase.LOAD)
FROM_PRETRAINED_KEYS = tuple(opt.key for opt in OPTIONS if opt.from_pretrained)


def validate_options(options: Mapping[str, Any]) -> None:
    """Refuse, at load time, a value of a key we use that we cannot use (LoadError)."""
    for key, value in options.items():
        option = BY_KEY.get(key)
        if option is not None and option.check is not None:
            option.check(key, value)


def load_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options consumed while loading."""
    return {k: v for k, v in options.items() if k in LOAD_TIME_OPTION_KEYS}


def call_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options passed as default keyword arguments of every pipeline call: all but the
    load-time ones, with ``cfg_scale`` as ``guidance_scale`` (an explicit one wins)."""
    calls = {k: v for k, v in options.items() if k not in LOAD_TIME_OPTION_KEYS}
    if "cfg_scale" in calls:
        cfg = calls.pop("cfg_scale")
        calls.setdefault("guidance_scale", cfg)
    return calls


def did_you_mean(key: str, accepted: Iterable[str]) -> str | None:
    """The known option or call argument ``key`` is most likely a typo of, if any."""
    choices = sorted(set(BY_KEY) | set(accepted))
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.75)
    return close[0] if close else None


def accepted_call_keys(pipe_class: type) -> set[str]:
    """What the calls of ``pipe_class`` and its img2img/inpainting variants take."""
    from diffusers_backend.registry.signatures import call_signature
    from diffusers_backend.registry.variants import variant_classes

    accepted = set(call_signature(pipe_class).params)
    for variant in variant_classes(pipe_class):
        accepted |= call_signature(variant).params
    return accepted


def ignored_option_warning(key: str, pipe_class: type) -> str:
    """The warning for an option no call of the pipeline takes, with a did-you-mean."""
    message = f"option {key!r} ignored: {pipe_class.__name__} does not take it"
    guess = did_you_mean(key, accepted_call_keys(pipe_class))
    return message + (f"; did you mean {guess!r}?" if guess else "")


def markdown_table() -> str:
    """The option table of docs/configuration.md, generated from :data:`OPTIONS`."""
    rows = ["| option | when | value | pipelines | meaning |", "|---|---|---|---|---|"]
    for opt in OPTIONS:
        names = " / ".join(f"`{k}`" for k in opt.keys)
        rows.append(f"| {names} | {opt.phase.value} | {opt.value} | {opt.pipelines} | {opt.doc} |")
    return "\n".join(rows) + "\n"

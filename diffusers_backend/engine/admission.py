"""Cost-aware admission: refuse, before it queues, a request that cannot finish.

The cost of one denoiser call is counted in *units* that follow its shape: per latent
token, the linear layers and convolutions (``tokens x width^2`` at each resolution level)
plus attention's quadratic term (``2 x tokens^2 x width`` where a level attends); the VAE
decode likewise (its convolutions at every up level, the mid block's attention over the
latent tokens). The block hooks (``block_checks``) time every denoiser and decoder call and
record seconds per unit here, per loaded model; the estimate of a request is its steps x
its denoiser call's units + its decode's units, at the lowest rate of the recent calls (so
it errs short: a refusal must be sure; bench/README.md has its measured error). Before the
first request after a load, the load's warm-up calls (``engine.warmup``) were measured.

A request whose estimate exceeds its client's remaining deadline is DEADLINE_EXCEEDED at
once, saying the estimate; one whose memory estimate (activations at the widest level, the
attention scores where the attention processor materialises them, the VAE decode at full
resolution) exceeds what the device has is RESOURCE_EXHAUSTED. Limits: docs/security.md.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffusers_backend.errors import DeadlineExceeded, ResourceExhausted
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.side_limit import denoiser as _denoiser
from diffusers_backend.tasks.side_limit import native_side

Shape = tuple[int, ...]
KEPT = 16  # recent calls remembered per kind
ACTIVATIONS = 6  # live tensors of the widest level during a denoiser call (measured: ~6)
DECODE_TENSORS = 4  # live full-resolution tensors during the VAE's last up block
CFG_DEFAULT = 7.0
WARMUP_MARGIN = 20.0  # see check()


@dataclass
class CostBook:
    """Measured (units, seconds) of a model's recent denoiser and decoder calls."""

    calls: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    warmup_calls: int = 0  # denoiser calls of the load's warm-up (engine.warmup)

    def only_warmup(self) -> bool:
        """True while the only measurements are the warm-up's (no request served yet)."""
        with self.lock:
            return len(self.calls.get("denoiser", ())) <= self.warmup_calls

    def warmed_up(self) -> None:
        """The calls recorded so far were the warm-up's."""
        with self.lock:
            self.warmup_calls = len(self.calls.get("denoiser", ()))

    def record(self, kind: str, units: float, seconds: float) -> None:
        with self.lock:
            self.calls.setdefault(kind, deque(maxlen=KEPT)).append((units, seconds))

    def rate(self, kind: str) -> float | None:
        """The lowest seconds per unit of the recent calls of ``kind``; None before any.

        The lowest, so an estimate errs short (a refusal must be sure): a call's fixed cost
        and a busy moment only ever raise a measured rate."""
        with self.lock:
            recent = [seconds / units for units, seconds in self.calls.get(kind, ()) if units > 0]
        return min(recent) if recent else None


_books: weakref.WeakKeyDictionary[Any, CostBook] = weakref.WeakKeyDictionary()
_books_lock = threading.Lock()


def costs_of(pipe: Any) -> CostBook:
    """The cost book of a loaded pipeline (its variants share the same modules, so theirs
    is found through the denoiser they share)."""
    key = _denoiser(pipe) or pipe
    with _books_lock:
        book = _books.get(key)
        if book is None:
            book = _books[key] = CostBook()
        return book


def _config(model: Any) -> Any:
    return getattr(model, "config", None)


# -- units ----------------------------------------------------------------------------------
def _unet_levels(config: Any) -> list[tuple[int, bool]]:
    """(width, attends) per resolution level of a UNet."""
    widths = list(getattr(config, "block_out_channels", ()) or ())
    kinds = list(getattr(config, "down_block_types", ()) or ())
    return [(int(w), "Attn" in str(kinds[i]) if i < len(kinds) else False)
            for i, w in enumerate(widths)]


def _transformer_width(config: Any) -> int:
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = int(getattr(config, "attention_head_dim", 0) or 0)
    return heads * head_dim or int(getattr(config, "inner_dim", 0) or 0) or 512


def call_units(model: Any, batch: int, tokens: float) -> float:
    """Cost units of one denoiser call on ``batch`` samples of ``tokens`` latent tokens."""
    config = _config(model)
    levels = _unet_levels(config) if hasattr(config, "block_out_channels") else []
    if levels:
        total = 0.0
        for i, (width, attends) in enumerate(levels):
            n = tokens / 4**i
            total += 2 * 18 * n * width**2  # two 3x3 convolutions, down and up
            if attends:
                total += 2 * (12 * n * width**2 + 2 * n * n * width)
        return batch * total
    width = _transformer_width(config)
    return batch * (12 * tokens * width**2 + 2 * tokens * tokens * width)


def decoder_widths(vae: Any) -> list[int]:
    """Channel widths of the VAE's levels (its config's ``block_out_channels``; the SD VAE's
    when it names none)."""
    widths = getattr(_config(vae), "block_out_channels", None) or (128, 256, 512, 512)
    return [int(w) for w in widths]


def decode_units(widths: list[int], latent_tokens: float) -> float:
    """Cost units of decoding one picture of ``latent_tokens`` latent positions."""
    top = widths[-1]
    total = 18.0 * latent_tokens * top**2 + 2 * latent_tokens**2 * top  # mid block
    for j, width in enumerate(reversed(widths)):
        total += 3 * 18 * latent_tokens * 4**j * width**2
    return total


def _shape_tokens(shape: Shape, patch: int) -> tuple[int, float]:
    """(batch, tokens) of a denoiser input: (B,C,H,W), (B,C,F,H,W) or packed (B,S,C)."""
    if len(shape) == 4:
        return shape[0], shape[2] * shape[3] / patch**2
    if len(shape) == 5:
        return shape[0], shape[2] * shape[3] * shape[4] / patch**2
    if len(shape) == 3:
        return shape[0], float(shape[1])
    return 0, 0.0


def _patch(model: Any) -> int:
    patch = getattr(_config(model), "patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        patch = patch[-1]
    return int(patch)


def denoiser_units(model: Any) -> Callable[[Shape], float]:
    """The units of a denoiser call, read from the shape of its input."""
    patch = _patch(model)

    def units(shape: Shape) -> float:
        batch, tokens = _shape_tokens(shape, patch)
        return call_units(model, batch, tokens) if batch else 0.0

    return units


def decoder_units(vae: Any) -> Callable[[Shape], float]:
    """The units of a VAE decoder call, read from the shape of its latent input."""
    widths = decoder_widths(vae)

    def units(shape: Shape) -> float:
        if len(shape) != 4:
            return 0.0
        return shape[0] * decode_units(widths, shape[2] * shape[3])

    return units


# -- a request's estimate ---------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: nothing measured for this model yet
    memory_bytes: int
    from_warmup: bool = False  # the rate is the warm-up's only (small calls: overstated)


def _vae_factor(pipe: Any) -> int:
    return int(getattr(pipe, "vae_scale_factor", 8) or 8)


def _token_side(pipe: Any, model: Any) -> int:
    """Pixels per latent token along one side: the VAE factor x the patch (or packing)."""
    side = _vae_factor(pipe) * _patch(model)
    processor = _config(getattr(pipe, "image_processor", None))
    return max(side, int(getattr(processor, "vae_scale_factor", 0) or 0))


def _cfg_batch(loaded: Any) -> int:
    """Samples per denoiser call: 2 with classifier-free guidance (not Flux: distilled)."""
    if "Flux" in type(loaded.pipe).__name__:
        return 1
    spec = getattr(loaded, "spec", None)
    guidance = getattr(spec, "cfg_scale", 0) or CFG_DEFAULT
    return 2 if guidance > 1 else 1


def _bytes_per_value(model: Any) -> int:
    dtype = getattr(model, "dtype", None)
    return int(getattr(dtype, "itemsize", 4) or 4)


def _materialises_scores(model: Any) -> bool:
    """True when an attention processor builds the full score matrix (the classic
    ``AttnProcessor``); the SDPA-based ones (flash / memory-efficient kernels) never do."""
    processors = getattr(model, "attn_processors", None)
    if not isinstance(processors, dict):
        return False
    return any(type(p).__name__ == "AttnProcessor" for p in processors.values())


def _heads(model: Any) -> int:
    heads = getattr(_config(model), "num_attention_heads", None) or getattr(
        _config(model), "attention_head_dim", 8)
    if isinstance(heads, (tuple, list)):
        heads = max(heads)
    return int(heads or 8)


def estimate(loaded: Any, width: int, height: int, steps: int) -> Estimate | None:
    """What an image request of this size and steps will take on ``loaded``; None when the
    pipeline has no denoiser we know."""
    pipe = loaded.pipe
    model = _denoiser(pipe)
    if model is None:
        return None
    native = native_side(pipe)
    width, height = width or native, height or native
    side = _token_side(pipe, model)
    tokens = (width // side) * (height // side)
    factor = _vae_factor(pipe)
    latent_tokens = (width // factor) * (height // factor)
    batch = _cfg_batch(loaded)
    vae = getattr(pipe, "vae", None)
    decoder = getattr(vae, "decoder", None)
    book = costs_of(pipe)
    den_rate, dec_rate = book.rate("denoiser"), book.rate("decoder")
    seconds = None
    if den_rate is not None:
        seconds = max(1, steps) * den_rate * call_units(model, batch, tokens)
        if decoder is not None and dec_rate is not None:
            seconds += dec_rate * decode_units(decoder_widths(vae), latent_tokens)
    value = _bytes_per_value(model)
    memory = 0
    levels = _unet_levels(_config(model)) if hasattr(_config(model), "block_out_channels") \
        else [(_transformer_width(_config(model)), True)]
    for i, (width_i, attends) in enumerate(levels):
        n = tokens / 4**i
        level = ACTIVATIONS * batch * n * width_i * value
        if attends and _materialises_scores(model):
            level += batch * _heads(model) * n * n * value
        memory = max(memory, int(level))
    if decoder is not None:
        top = decoder_widths(vae)[0]  # the width at full resolution
        memory = max(memory, DECODE_TENSORS * width * height * top * value)
    return Estimate(seconds, memory, book.only_warmup())


# -- the checks -------------------------------------------------------------------------------
def device_memory(loaded: Any, settings: Settings) -> int | None:
    """Bytes the device can still give a request: ``DIFFUSERS_DEVICE_MEMORY`` when set, else
    the free (plus cached) memory of the model's GPU, or the host's available memory."""
    if settings.device_memory:
        return settings.device_memory
    device = str(getattr(loaded, "device", "cpu") or "cpu")
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    if device.startswith("cpu"):
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def check(loaded: Any, width: int, height: int, steps: int, time_left: float | None,
          settings: Settings) -> Estimate | None:
    """Refuse what cannot fit or cannot finish in ``time_left`` seconds; the estimate."""
    cost = estimate(loaded, width, height, steps)
    if cost is None:
        return None
    size = f"{width or native_side(loaded.pipe)}x{height or native_side(loaded.pipe)}"
    available = device_memory(loaded, settings)
    if available is not None and cost.memory_bytes > available:
        source = " (DIFFUSERS_DEVICE_MEMORY)" if settings.device_memory else ""
        raise ResourceExhausted(
            f"{size} would need about {_gib(cost.memory_bytes)} of memory, more than the "
            f"{_gib(available)} the device has{source}; ask for a smaller size")
    # The warm-up's small calls overstate the rate (their fixed cost weighs most; measured
    # up to 12x, bench/README.md): from them alone, refuse only what is far past the deadline.
    margin = WARMUP_MARGIN if cost.from_warmup else 1.0
    if (settings.deadline_admission and time_left is not None and cost.seconds is not None
            and cost.seconds > time_left * margin):
        raise DeadlineExceeded(
            f"{size} with {steps} steps is estimated to take {cost.seconds:.1f}s on this "
            f"server, more than the {max(0.0, time_left):.1f}s left before the client's "
            "deadline; ask for fewer steps or a smaller size, or allow more time")
    return cost


def admit(plan: Any, is_cancelled: Callable[[], bool], settings: Settings) -> None:
    """Check an image plan before it queues (other plans pass): ``is_cancelled`` may carry
    ``time_left()``, the seconds before its client's deadline (the servicer's probe)."""
    if type(plan).__name__ != "ImagePlan":
        return
    time_left = getattr(is_cancelled, "time_left", None)
    check(plan.loaded, plan.width, plan.height, plan.steps,
          time_left() if callable(time_left) else None, settings)

"""LoRA tags on a compiled denoiser without recompiling: one fixed adapter slot, hot-swapped.

At LoadModel, before ``compile`` / ``compile_regional``, the denoiser gets
``enable_lora_hotswap(target_rank=R)`` (R: the ``lora_hotswap_rank`` option, default
:data:`DEFAULT_RANK`) and one adapter, :data:`SLOT`, of rank R holding zeros, on the union of
the layers that the LoRA files found then (the tag folders and the load-time LoRAs) target.
Its scale is 1 and never changes.

Per request, the tags' weights are folded into the tensors, not the scale: each LoRA's
``lora_B`` is multiplied by its own ``alpha / rank`` and by the tag's weight, and several
LoRAs are one adapter by concatenating ranks (A rows and B columns stacked, zeros for the
rest up to R). That adapter is swapped in with ``load_lora_adapter(..., hotswap=True)``,
which copies into the slot's tensors in place, so dynamo's guards all still hold. A
tag-free request swaps in zeros (the plain picture). A tag naming a load-time LoRA adds
``(weight - load-time scale)`` of it, which is the same sum of deltas.

What the slot cannot hold is refused (INVALID_ARGUMENT saying why): a LoRA with text-encoder
layers (the text encoder is not swapped), a LoRA on layers outside the slot's, more than R
ranks on a layer (raise ``lora_hotswap_rank``), and LoRA forms other than plain A/B (DoRA,
biases). Only the pipeline thread touches a slot.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers_backend.errors import InvalidArgument, LoadError, short_message
from diffusers_backend.loading import lora_cache, lora_library, weight_guard
from diffusers_backend.loading.adapters import lora_plan
from diffusers_backend.loading.spec import LoadSpec

log = logging.getLogger(__name__)
SLOT = "hotswap_slot"
DEFAULT_RANK = 64  # total LoRA rank one layer may carry per request (sum over the tags)
RANK_OPTION = "lora_hotswap_rank"
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class Factors:
    """One LoRA file's denoiser layers: module name -> (lora_A, lora_B * alpha/rank)."""

    layers: dict[str, tuple[Any, Any]]
    text_encoder: bool


def _denoiser(pipe: Any) -> tuple[str, Any]:
    for name in ("transformer", "unet", "prior"):
        module = getattr(pipe, name, None)
        if module is not None:
            return name, module
    return "", None


def read_factors(pipe: Any, path: Path, safetensors_only: bool) -> Factors:
    """Read a LoRA file with diffusers' converters and fold each layer's scale into B."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.utils.other import get_pattern_key

    prefix, module = _denoiser(pipe)
    strict = weight_guard.strict(safetensors_only)
    state, alphas, metadata = pipe.lora_state_dict(
        str(path.parent), weight_name=path.name, return_lora_metadata=True, **strict)
    head = prefix + "."
    own = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
    text = any(not k.startswith(head) for k in state)
    if not own:
        return Factors({}, text)
    if "lora_A" not in next(iter(own)):
        own = convert_unet_state_dict_to_peft(own)
    odd = [k for k in own if not k.endswith((_A, _B))]
    if odd:
        raise ValueError(f"layers other than plain LoRA A/B ({odd[0]}...), e.g. DoRA or biases")
    own_alphas = {k[len(head):]: v for k, v in (alphas or {}).items() if k.startswith(head)}
    own_meta = ({k.removeprefix(head): v for k, v in metadata.items() if k.startswith(head)}
                if metadata else None)
    ranks = {f"^{k}": v.shape[1] for k, v in own.items() if k.endswith(_B) and v.ndim > 1}
    config = _create_lora_config(own, own_alphas or None, own_meta or None, ranks,
                                 model_state_dict=module.state_dict())
    layers: dict[str, tuple[Any, Any]] = {}
    for key, down in own.items():
        if not key.endswith(_A):
            continue
        name = key[: -len(_A)]
        up = own[name + _B]
        b_key = name + _B
        rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), b_key),
                                       config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), b_key),
                                         config.lora_alpha)
        scaling = alpha / (math.sqrt(rank) if config.use_rslora else rank)
        layers[name] = (down.float(), up.float() * scaling)
    return Factors(layers, text)


@dataclass
class Slot:
    """The prepared adapter of one compiled denoiser, and the LoRAs read for it (an LRU)."""

    rank: int
    cache_size: int
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # layer -> A, B shapes at R
    factors: OrderedDict[tuple[str, int, int], Factors] = field(default_factory=OrderedDict)
    holding: tuple[Any, ...] | None = ()  # what the slot holds now (None: unknown)

    def _factors(self, pipe: Any, name: str, path: Path, safetensors_only: bool) -> Factors:
        key = lora_cache.file_key(path)
        found = self.factors.get(key)
        if found is not None:
            self.factors.move_to_end(key)
            lora_cache.STATS.hits += 1
            return found
        lora_cache.STATS.misses += 1
        try:
            found = read_factors(pipe, path, safetensors_only)
        except Exception as exc:  # noqa: BLE001 - the tag's LoRA does not fit this model
            lora_cache.STATS.load_failures += 1
            raise InvalidArgument(f"LoRA {name!r} cannot be applied to the loaded "
                                  f"{type(pipe).__name__}: {short_message(exc)}") from None
        lora_cache.STATS.loads += 1
        lora_cache.STATS.cached += 1
        self.factors[key] = found
        while len(self.factors) > self.cache_size:
            self.factors.popitem(last=False)
            lora_cache.STATS.evictions += 1
            lora_cache.STATS.cached -= 1
        return found

    def swap(self, pipe: Any, uses: list[tuple[str, Path, float]],
             safetensors_only: bool) -> None:
        """Make the slot hold the sum of ``weight * LoRA`` over ``uses`` (none: zeros)."""
        import torch

        key = tuple((str(path), lora_cache.file_key(path), weight)
                    for _, path, weight in uses if weight != 0)
        if key == self.holding:
            return
        downs = {n: torch.zeros(a) for n, (a, _) in self.shapes.items()}
        ups = {n: torch.zeros(b) for n, (_, b) in self.shapes.items()}
        used = dict.fromkeys(self.shapes, 0)
        for name, path, weight in uses:
            if weight == 0:
                continue
            factors = self._factors(pipe, name, path, safetensors_only)
            if factors.text_encoder:
                raise InvalidArgument(
                    f"LoRA {name!r} has text-encoder layers, which a compiled model cannot "
                    "hot-swap; serve it from a model loaded without compile / compile_regional")
            for layer, (down, up) in factors.layers.items():
                if layer not in self.shapes:
                    raise InvalidArgument(
                        f"LoRA {name!r} targets {layer}, outside the layers the compiled "
                        "model's LoRA slot was prepared for at LoadModel (the LoRA files "
                        "found then); put the file in a LoRA folder and load the model again")
                start, rank = used[layer], down.shape[0]
                if start + rank > self.rank:
                    raise InvalidArgument(
                        f"the LoRA tags need rank {start + rank} on {layer}, more than "
                        f"{RANK_OPTION}:{self.rank} of the compiled model; raise that option")
                downs[layer][start:start + rank] = down
                ups[layer][:, start:start + rank] = up * weight
                used[layer] = start + rank
        state = {f"{n}{_A}": downs[n] for n in self.shapes}
        state.update({f"{n}{_B}": ups[n] for n in self.shapes})
        self.holding = None
        _, module = _denoiser(pipe)
        module.load_lora_adapter(state, prefix=None, adapter_name=SLOT, hotswap=True)
        self.holding = key


_SLOTS: weakref.WeakKeyDictionary[Any, Slot] = weakref.WeakKeyDictionary()


def slot_of(pipe: Any) -> Slot | None:
    """The hot-swap slot of ``pipe`` (None: tags use the plain adapter path)."""
    return _SLOTS.get(pipe)


def hotswap_rank(options: dict[str, Any]) -> int:
    value = options.get(RANK_OPTION)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else DEFAULT_RANK


def _candidate_files(spec: LoadSpec) -> list[Path]:
    files = list(lora_library.available(spec).values())
    for reference, _scale in lora_plan(spec):
        local = weight_guard.local_weights(reference, spec.model_path, "LoRA", False)
        if local is not None and Path(local).is_file():
            files.append(Path(local))
    return files


def prepare(pipe: Any, spec: LoadSpec, safetensors_only: bool = True) -> str:
    """Give the denoiser its zero slot before it is compiled; a note for the load log
    (empty when the pipeline takes no LoRA or no LoRA file was found)."""
    import torch

    prefix, module = _denoiser(pipe)
    if module is None or not hasattr(pipe, "load_lora_weights") \
            or not hasattr(module, "enable_lora_hotswap"):
        return ""
    rank = hotswap_rank(spec.options)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for path in _candidate_files(spec):
        try:
            factors = read_factors(pipe, path, safetensors_only)
        except Exception as exc:  # noqa: BLE001 - not a LoRA for this model: tags refuse it
            log.info("LoRA slot: %s left out (%s)", path.name, short_message(exc))
            continue
        for layer, (down, up) in factors.layers.items():
            shapes.setdefault(layer, ((rank, *down.shape[1:]), (up.shape[0], rank,
                                                                 *up.shape[2:])))
    if not shapes:
        return ""
    dtype = getattr(module, "dtype", torch.float32)
    state = {f"{n}{_A}": torch.zeros(a, dtype=dtype) for n, (a, _) in shapes.items()}
    state.update({f"{n}{_B}": torch.zeros(b, dtype=dtype) for n, (_, b) in shapes.items()})
    load_time = pipe.get_active_adapters() if hasattr(pipe, "get_active_adapters") else []
    try:
        module.enable_lora_hotswap(target_rank=rank,
                                   check_compiled="ignore" if load_time else "error")
        module.load_lora_adapter(state, prefix=None, adapter_name=SLOT)
        if load_time:
            scales = _load_time_scales(spec)
            pipe.set_adapters([*load_time, SLOT],
                              adapter_weights=[*(scales.get(n, 1.0) for n in load_time), 1.0])
    except Exception as exc:  # noqa: BLE001 - reported as a load failure naming the part
        raise LoadError(f"LoRA hot-swap slot ({RANK_OPTION}:{rank}): "
                        f"{short_message(exc)}") from exc
    _SLOTS[pipe] = Slot(rank, lora_cache.cache_size(spec.options), shapes)
    return f"LoRA hot-swap slot rank {rank} on {len(shapes)} {prefix} layers"


def _load_time_scales(spec: LoadSpec) -> dict[str, float]:
    return {f"lora_{index}": scale for index, (_, scale) in enumerate(lora_plan(spec))}

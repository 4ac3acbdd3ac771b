"""Prompt weighting for SD3 and Flux, with the syntax users write for SD/SDXL.

compel (``prompts.py``) weights SD 1.x/2.x and SDXL prompts. Its Flux wrapper reads compel's own
syntax and truncates, and it has nothing for SD3, so for these families the weighting is done
here, on the text encoders' outputs:

1. the prompt is parsed into (text, weight) fragments: ``(word)`` = 1.1, ``[word]`` = 1/1.1,
   ``(word:1.3)`` (A1111) and ``(word)1.3`` (compel) = 1.3, nested brackets multiply, ``\\(``
   is a literal bracket (:func:`parse_weighted_prompt`);
2. each fragment is tokenized alone, so every token carries its fragment's weight;
3. CLIP encoders take the tokens in chunks of 75 (+ start and end token, padded to 77), so
   prompts longer than 77 tokens are encoded whole, chunk after chunk, and concatenated along
   the sequence; T5 takes the whole sequence up to ``max_sequence_length`` as diffusers does;
4. each token's output embedding is moved from the empty prompt's embedding at the same
   position by its weight, ``empty + w * (token - empty)`` (see :func:`_apply_weights`);
   weight 1 leaves it untouched, so an unweighted prompt gives diffusers' own embeddings;
5. the embeddings are assembled as each pipeline's ``encode_prompt`` does (SD3: CLIP-L | CLIP-G
   side by side, padded to T5's width, then T5 after them; Flux: T5 sequence), and the pooled
   vectors come from the prompt's plain text (weights cannot apply to a pooled vector).

Weighting per-token encoder outputs follows sd_embed's approach for these families, with the
empty prompt as the reference point (as ComfyUI weights) because a plain per-token scale is
normalised away inside MMDiT/Flux; the code is ours. Used only with ``COMPEL=1``; a prompt
without weighting syntax that fits in one CLIP chunk is left to the pipeline (returns None),
so nothing changes for it.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass
from typing import Any

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.registry.signatures import call_signature

log = logging.getLogger(__name__)

ROUND_WEIGHT = 1.1
CLIP_CHUNK = 75  # tokens per CLIP chunk, without its start and end tokens

_TOKEN = re.compile(
    r"""
    \\[\\()\[\]:]                          # an escaped bracket, colon or backslash
    | \(                                   # open a round group
    | \[                                   # open a square group
    | :\s*(?P<colon>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)    # ':1.3)' closes with a weight
    | \)(?P<suffix>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?![\w.]))?  # ')' or compel's ')1.3'
    | \]
    | [^\\()\[\]:]+                        # plain text
    | :                                    # a colon that is only text
    | \\                                   # a lone backslash
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float


def parse_weighted_prompt(prompt: str) -> list[Fragment]:
    """Split a prompt into fragments with their weights (adjacent equal weights merged)."""
    pieces: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(prompt or ""):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif match.group("colon") is not None:
            if round_open:
                scale(round_open.pop(), float(match.group("colon")))
            else:
                pieces.append([token, 1.0])
        elif token.startswith(")"):
            if round_open:
                suffix = match.group("suffix")
                scale(round_open.pop(), float(suffix) if suffix else ROUND_WEIGHT)
            else:
                pieces.append([token, 1.0])
        elif token == "]":
            if square_open:
                scale(square_open.pop(), 1 / ROUND_WEIGHT)
            else:
                pieces.append([token, 1.0])
        else:
            pieces.append([token, 1.0])
    for start in round_open:  # unclosed groups still weigh, as in A1111
        scale(start, ROUND_WEIGHT)
    for start in square_open:
        scale(start, 1 / ROUND_WEIGHT)

    merged: list[Fragment] = []
    for text, weight in pieces:
        if not text:
            continue
        if merged and abs(merged[-1].weight - weight) < 1e-9:
            merged[-1] = Fragment(merged[-1].text + text, merged[-1].weight)
        else:
            merged.append(Fragment(text, weight))
    return merged


def plain_text(prompt: str) -> str:
    """The prompt's words without weighting syntax."""
    return "".join(f.text for f in parse_weighted_prompt(prompt))


def has_weights(prompt: str) -> bool:
    return any(abs(f.weight - 1.0) > 1e-9 for f in parse_weighted_prompt(prompt))


# ---------------------------------------------------------------------- tokens and weights


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the tokenizer adds around a text (CLIP: BOS / EOS; T5: - / EOS)."""
    empty = list(tokenizer("", add_special_tokens=True).input_ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    prefix = empty[:1] if empty and bos is not None and empty[0] == bos else []
    return prefix, empty[len(prefix):]


def _weighted_ids(tokenizer: Any, fragments: list[Fragment]) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    weights: list[float] = []
    for fragment in fragments:
        # Stripped: word-piece tokenizers (T5's SentencePiece) would otherwise turn a space at
        # a fragment's edge into a token of its own; CLIP drops such spaces anyway.
        text = fragment.text.strip()
        if not text:
            continue
        tokens = list(tokenizer(text, add_special_tokens=False).input_ids)
        ids.extend(tokens)
        weights.extend([fragment.weight] * len(tokens))
    return ids, weights


def _pad_id(tokenizer: Any, suffix: list[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = suffix[-1] if suffix else 0
    return int(pad)


def _clip_chunks(tokenizer: Any, fragments: list[Fragment],
                 chunks: int = 0) -> tuple[list[list[int]], list[list[float]]]:
    """Token ids and weights in 77-token CLIP chunks (at least ``chunks`` of them)."""
    prefix, suffix = _special_tokens(tokenizer)
    ids, weights = _weighted_ids(tokenizer, fragments)
    size = getattr(tokenizer, "model_max_length", 77)
    size = 77 if not isinstance(size, int) or size > 1000 else size
    body = max(1, size - len(prefix) - len(suffix))
    pad = _pad_id(tokenizer, suffix)
    chunk_ids, chunk_weights = [], []
    count = max(chunks, -(-len(ids) // body), 1)
    for index in range(count):
        part = ids[index * body:(index + 1) * body]
        part_w = weights[index * body:(index + 1) * body]
        row = prefix + part + suffix
        row_w = [1.0] * len(prefix) + part_w + [1.0] * len(suffix)
        row += [pad] * (size - len(row))
        row_w += [1.0] * (size - len(row_w))
        chunk_ids.append(row)
        chunk_weights.append(row_w)
    return chunk_ids, chunk_weights


def clip_token_count(tokenizer: Any, prompt: str) -> int:
    return len(_weighted_ids(tokenizer, parse_weighted_prompt(prompt))[0])


def _t5_ids(tokenizer: Any, fragments: list[Fragment],
            max_length: int) -> tuple[list[int], list[float]]:
    prefix, suffix = _special_tokens(tokenizer)
    ids, weights = _weighted_ids(tokenizer, fragments)
    room = max(0, max_length - len(prefix) - len(suffix))
    if len(ids) > room:
        log.warning("prompt truncated to max_sequence_length=%d tokens for the T5 encoder",
                    max_length)
    row = prefix + ids[:room] + suffix
    row_w = [1.0] * len(prefix) + weights[:room] + [1.0] * len(suffix)
    pad = _pad_id(tokenizer, suffix)
    return row + [pad] * (max_length - len(row)), row_w + [1.0] * (max_length - len(row_w))


# -------------------------------------------------------------------------------- encoding


def _device(pipe: Any) -> Any:
    return getattr(pipe, "_execution_device", None) or "cpu"


def _clip_hidden(pipe: Any, tokenizer: Any, encoder: Any, fragments: list[Fragment],
                 chunks: int, clip_skip: int) -> Any:
    """SD3's CLIP sequence embeddings (penultimate layer, or clip_skip's), weighted."""
    import torch

    ids, weights = _clip_chunks(tokenizer, fragments, chunks)
    weighted = any(w != 1.0 for row in weights for w in row)
    if weighted:  # the empty prompt's chunk is the reference the weights scale from
        ids = ids + _clip_chunks(tokenizer, [], 1)[0]
    out = encoder(torch.tensor(ids, device=_device(pipe)), output_hidden_states=True)
    hidden = out.hidden_states[-(clip_skip + 2)] if clip_skip > 0 else out.hidden_states[-2]
    hidden = hidden.to(dtype=encoder.dtype)
    if weighted:
        hidden = _apply_weights(hidden[:-1], hidden[-1:], weights)
    return hidden.reshape(1, -1, hidden.shape[-1])


def _apply_weights(hidden: Any, empty: Any, weights: list[list[float]]) -> Any:
    """Move each token's embedding away from (or towards) the empty prompt's embedding at
    the same position by its weight: ``empty + w * (hidden - empty)``.

    Plain scaling (``w * hidden``) does little on SD3 and Flux: their transformers normalise
    every text token (LayerNorm) before attention, which undoes a per-token scale. The
    difference from the empty prompt is what the prompt adds, so that is what is weighted;
    weight 1 leaves a token exactly as encoded, weight 0 makes it the empty prompt's.
    """
    import torch

    scale = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype)[:, :, None]
    moved = empty + scale * (hidden - empty)
    return torch.where(scale != 1, moved, hidden)


def _clip_pooled(pipe: Any, tokenizer: Any, encoder: Any, text: str, field: str) -> Any:
    """The pooled vector of the plain text, as diffusers computes it (first 77 tokens)."""
    import torch

    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    out = encoder(ids.to(_device(pipe)), output_hidden_states=False)
    pooled = out.pooler_output if field == "pooler_output" else out[0]
    return pooled.to(dtype=encoder.dtype) if torch.is_tensor(pooled) else pooled


def _t5_embeds(pipe: Any, tokenizer: Any, encoder: Any, fragments: list[Fragment],
               max_length: int) -> Any:
    import torch

    ids, weights = _t5_ids(tokenizer, fragments, max_length)
    weighted = any(w != 1.0 for w in weights)
    rows = [ids, _t5_ids(tokenizer, [], max_length)[0]] if weighted else [ids]
    hidden = encoder(torch.tensor(rows, device=_device(pipe)), output_hidden_states=False)[0]
    hidden = hidden.to(dtype=encoder.dtype)
    if weighted:
        return _apply_weights(hidden[:1], hidden[1:], [weights])
    return hidden


def _chroma_embeds(pipe: Any, prompt: str, max_length: int) -> tuple[Any, Any]:
    """Chroma's T5 sequence (encoded with its attention mask) and the transformer's mask:
    the text tokens and the first padding token, as diffusers builds it."""
    import torch

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    prefix, suffix = _special_tokens(tokenizer)
    ids, weights = _t5_ids(tokenizer, parse_weighted_prompt(prompt), max_length)
    empty_ids = _t5_ids(tokenizer, [], max_length)[0]
    real = min(max_length, len(prefix) + len(suffix) + len(
        _weighted_ids(tokenizer, parse_weighted_prompt(prompt))[0]))
    lengths = [real, min(max_length, len(prefix) + len(suffix))]
    masks = torch.tensor([[1] * n + [0] * (max_length - n) for n in lengths],
                         device=_device(pipe))
    hidden = encoder(torch.tensor([ids, empty_ids], device=_device(pipe)),
                     output_hidden_states=False, attention_mask=masks)[0]
    hidden = hidden.to(dtype=encoder.dtype)
    embeds = hidden[:1]
    if any(w != 1.0 for w in weights):
        embeds = _apply_weights(hidden[:1], hidden[1:], [weights])
    positions = torch.arange(max_length, device=hidden.device)[None]
    mask = (positions <= real).to(dtype=hidden.dtype)
    return embeds, mask


def _chunk_count(tokenizer: Any, prompts: list[str]) -> int:
    return max(max(1, -(-clip_token_count(tokenizer, p) // CLIP_CHUNK)) for p in prompts)


def _sd3_embeds(pipe: Any, prompt: str, chunks: int, clip_skip: int,
                max_length: int) -> tuple[Any, Any]:
    import torch

    fragments = parse_weighted_prompt(prompt)
    text = plain_text(prompt)
    clip = [_clip_hidden(pipe, pipe.tokenizer, pipe.text_encoder, fragments, chunks, clip_skip),
            _clip_hidden(pipe, pipe.tokenizer_2, pipe.text_encoder_2, fragments, chunks,
                         clip_skip)]
    pooled = torch.cat([_clip_pooled(pipe, pipe.tokenizer, pipe.text_encoder, text, "embeds"),
                        _clip_pooled(pipe, pipe.tokenizer_2, pipe.text_encoder_2, text,
                                     "embeds")], dim=-1)
    clip_embeds = torch.cat(clip, dim=-1)
    if getattr(pipe, "text_encoder_3", None) is not None:
        t5 = _t5_embeds(pipe, pipe.tokenizer_3, pipe.text_encoder_3, fragments, max_length)
    else:  # SD3 without T5: zeros in its place, as diffusers does
        t5 = torch.zeros((1, max_length, pipe.transformer.config.joint_attention_dim),
                         device=clip_embeds.device, dtype=clip_embeds.dtype)
    clip_embeds = torch.nn.functional.pad(clip_embeds, (0, t5.shape[-1] - clip_embeds.shape[-1]))
    return torch.cat([clip_embeds, t5.to(clip_embeds.dtype)], dim=-2), pooled


def _flux_embeds(pipe: Any, prompt: str, max_length: int) -> tuple[Any, Any]:
    fragments = parse_weighted_prompt(prompt)
    pooled = _clip_pooled(pipe, pipe.tokenizer, pipe.text_encoder, plain_text(prompt),
                          "pooler_output")
    embeds = _t5_embeds(pipe, pipe.tokenizer_2, pipe.text_encoder_2, fragments, max_length)
    return embeds, pooled


# ------------------------------------------------------------------------------ families


def _is_t5(encoder: Any) -> bool:
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    return model_type in ("t5", "umt5", "mt5") or type(encoder).__name__.startswith(
        ("T5", "UMT5", "MT5"))


def _is_clip(encoder: Any) -> bool:
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    return model_type == "clip_text_model" or type(encoder).__name__.startswith("CLIPText")


def weighting_family(pipe: Any) -> str | None:
    """``"sd3"``, ``"flux"``, ``"chroma"`` or None, from the components and the call
    (img2img, inpaint and ControlNet variants included)."""
    try:
        params = set(call_signature(type(pipe)).params)
    except (TypeError, ValueError):
        return None
    enc1, enc2 = getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)
    if (_is_t5(enc1) and getattr(pipe, "tokenizer", None) is not None
            and not hasattr(pipe, "text_encoder_2")
            and {"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                 "negative_prompt_attention_mask"} <= params):
        return "chroma"  # Flux-like, T5 only, masked
    if not {"prompt_embeds", "pooled_prompt_embeds"} <= params:
        return None
    if not (_is_clip(enc1) and getattr(pipe, "tokenizer", None) is not None):
        return None
    if hasattr(pipe, "text_encoder_3"):
        if _is_clip(enc2) and getattr(pipe, "tokenizer_2", None) is not None:
            return "sd3"
        return None
    if _is_t5(enc2) and getattr(pipe, "tokenizer_2", None) is not None:
        return "flux"
    return None


def _max_sequence_length(pipe: Any, family: str) -> int:
    try:
        default = inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
    except (KeyError, TypeError, ValueError):
        default = None
    if isinstance(default, int) and default > 0:
        return default
    return 256 if family == "sd3" else 512


def weighted_prompt_kwargs(pipe: Any, prompt: str, negative_prompt: str, *,
                           clip_skip: int = 0, force: bool = False) -> dict[str, Any] | None:
    """``prompt_embeds`` / ``pooled_prompt_embeds`` (and negative ones) for SD3 or Flux;
    ``prompt_embeds`` / ``prompt_attention_mask`` (and negative ones) for Chroma.

    None for other pipelines, and (unless ``force``) for prompts without weighting syntax
    that fit one CLIP chunk: the pipeline's own encoding is then the same thing.
    """
    family = weighting_family(pipe)
    if family is None:
        return None
    prompt, negative = prompt or "", negative_prompt or ""
    texts = [prompt, negative] if negative else [prompt]
    tokenizer = pipe.tokenizer
    long_clip = family == "sd3" and any(clip_token_count(tokenizer, t) > CLIP_CHUNK
                                        for t in texts)
    syntax = any(has_weights(t) or plain_text(t) != t for t in texts)
    if not force and not long_clip and not syntax:
        return None

    import torch

    max_length = _max_sequence_length(pipe, family)
    params = set(call_signature(type(pipe)).params)
    try:
        with torch.no_grad():
            if family == "chroma":  # guidance always has a negative ("" when none)
                embeds, mask = _chroma_embeds(pipe, prompt, max_length)
                neg_embeds, neg_mask = _chroma_embeds(pipe, negative, max_length)
                return {"prompt_embeds": embeds, "prompt_attention_mask": mask,
                        "negative_prompt_embeds": neg_embeds,
                        "negative_prompt_attention_mask": neg_mask}
            if family == "sd3":
                chunks = max(_chunk_count(pipe.tokenizer, [prompt, negative]),
                             _chunk_count(pipe.tokenizer_2, [prompt, negative]))
                embeds, pooled = _sd3_embeds(pipe, prompt, chunks, clip_skip, max_length)
                # SD3 always runs guidance with a negative; "" when none, as diffusers does.
                neg_embeds, neg_pooled = _sd3_embeds(pipe, negative, chunks, clip_skip,
                                                     max_length)
            else:
                embeds, pooled = _flux_embeds(pipe, prompt, max_length)
                neg_embeds = neg_pooled = None
                if negative and "negative_prompt_embeds" in params:
                    neg_embeds, neg_pooled = _flux_embeds(pipe, negative, max_length)
    except (ValueError, IndexError, TypeError) as exc:
        raise InvalidArgument(f"could not apply prompt weighting: {exc}") from exc
    kwargs: dict[str, Any] = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if neg_embeds is not None:
        kwargs["negative_prompt_embeds"] = neg_embeds
        kwargs["negative_pooled_prompt_embeds"] = neg_pooled
    return kwargs

"""Prompt handling for a pipeline call: compel prompt weighting and CLIP skip.

With ``COMPEL=1`` prompts may use compel's weighting syntax (``a (red)++ cube``,
``(cube)1.3``, ``("a", "b").and()``...). The weighted prompt becomes embeddings passed as
``prompt_embeds`` (plus the pooled ones for SDXL) in place of ``prompt``; the negative
prompt is weighted the same way, and both come out padded to one length so long prompts
work. Only pipelines that take CLIP embeddings in the SD 1.x/2.x or SDXL shape get this;
SD3 and Flux get the same weighting with the A1111 syntax (``(word:1.3)``) from
``prompts/weighted.py``; for any other pipeline (video models...) the plain prompts are
passed, so a model never fails because ``COMPEL`` is on.

CLIP skip follows LocalAI: the model YAML's ``clip_skip`` (or the request's, which wins)
is passed straight through as diffusers' ``clip_skip``, where 1 means "use the layer
before the last one" (what A1111 calls "Clip skip: 2"). It is only passed to pipelines
whose ``__call__`` takes it. compel 2.5.1 has no ``clip_skip`` option of its own, so with
compel the same layer is selected here (see :class:`_ClipSkipEncoder`), with the layer
choice and normalization diffusers itself uses. Without clip skip, a prompt without
weights gives the same image with COMPEL on or off. With clip skip there is one deliberate
difference: diffusers applies it to the positive prompt only, while with compel it applies
to the negative prompt too, as in A1111.

Nothing here imports torch, diffusers or compel at module level: the server must start
fast, and compel is optional.
"""

from __future__ import annotations

import logging
from typing import Any

from diffusers_backend.prompts.clip_skip import (
    call_parameters,
    check_clip_skip_depth,
    clip_skip_kwargs,
    effective_clip_skip,
    ensure_text_model_path,
    prompt_family,
)
from diffusers_backend.prompts.compel_sd import (
    compel_available,
    compel_prompt_kwargs,
    warn_if_compel_missing,
)

log = logging.getLogger(__name__)

__all__ = ["build_prompt_kwargs", "clip_skip_kwargs", "compel_available", "compel_prompt_kwargs",
           "effective_clip_skip", "warn_if_compel_missing"]

# ------------------------------------------------------------------------------ the entry


def build_prompt_kwargs(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    *,
    use_compel: bool,
    clip_skip: int,
    clip_skip_enabled: bool = True,
    sd_embed: bool = False,
) -> dict[str, Any]:
    """The prompt-related keyword arguments for one pipeline call.

    ``clip_skip`` is the effective value (see :func:`effective_clip_skip`); with
    ``clip_skip_enabled`` off (``CLIPSKIP=0``) it is ignored. Returns embeddings from
    :func:`compel_prompt_kwargs` when ``use_compel`` and the pipeline supports them, else
    ``{"prompt": ..., "negative_prompt": ...}`` (no ``negative_prompt`` when it is empty or
    the pipeline takes none) plus ``clip_skip`` where it applies.

    ``sd_embed`` (``SD_EMBED=1``, what LocalAI users set for sd_embed) weights SD 1.x/2.x and
    SDXL prompts written in A1111's syntax (``(word:1.2)``) with compel's engine; SD3, Flux
    and Chroma are weighted as with ``use_compel``. ``use_compel`` wins when both are on.
    """
    clip_skip = clip_skip if clip_skip_enabled and clip_skip and clip_skip > 0 else 0
    params = call_parameters(pipe)
    if use_compel or sd_embed:
        syntax = "compel" if use_compel else "a1111"
        embeds = compel_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip=clip_skip,
                                      syntax=syntax)
        if embeds is None:  # SD3 and Flux: weighted here (A1111 syntax), compel not needed
            from diffusers_backend.prompts.weighted import weighted_prompt_kwargs

            embeds = weighted_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip=clip_skip)
        if embeds is not None:
            return embeds

    kwargs: dict[str, Any] = {"prompt": prompt or ""}
    if negative_prompt:
        if "negative_prompt" in params or not params:
            kwargs["negative_prompt"] = negative_prompt
        else:
            log.debug("%s takes no negative prompt; ignoring it", type(pipe).__name__)
    skip = clip_skip_kwargs(params, clip_skip, enabled=True) if params else {}
    if skip:
        family = prompt_family(pipe, params)
        if family is not None:
            check_clip_skip_depth(pipe, family, clip_skip)
        ensure_text_model_path(pipe)
    kwargs.update(skip)
    return kwargs

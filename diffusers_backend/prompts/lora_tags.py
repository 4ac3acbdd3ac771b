"""A1111-style LoRA tags in a prompt (``<lora:NAME>``, ``<lora:NAME:WEIGHT>``): found, checked
and removed before the prompt is encoded, so the text encoder never reads them.

Only the syntax lives here; which file a NAME means is :mod:`~diffusers_backend.loading.
lora_library`'s job. The rules (docs/features.md, "LoRA per request"):
* any number of tags, anywhere in the positive prompt; WEIGHT defaults to 1.0 and may be
  negative; a tag and the blanks around it become one blank;
* a NAME tagged twice, an empty NAME, a NAME with a path separator, a WEIGHT that is not a
  finite number, more than two fields, or an unclosed ``<lora:`` are INVALID_ARGUMENT;
* the negative prompt takes no tags: a LoRA changes the denoiser for the whole picture, not
  one side of classifier-free guidance, so a tag there is refused rather than silently
  read as words or silently applied to everything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from diffusers_backend.errors import InvalidArgument

_OPEN = re.compile(r"<\s*lora\s*:", re.IGNORECASE)
MAX_TAGS = 16  # more adapters than this in one call is a mistake, not a style


@dataclass(frozen=True)
class LoraTag:
    """One tag as written: the LoRA's name and its weight."""

    name: str
    weight: float


def _field(tag: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"malformed LoRA tag {tag!r} in the prompt: {why}; write "
                           "<lora:NAME> or <lora:NAME:WEIGHT>, e.g. <lora:pixel-art:0.8>")


def _parse_one(tag: str, body: str) -> LoraTag:
    fields = body.split(":")
    if len(fields) > 2:
        raise _field(tag, "it has more than a name and a weight")
    name = fields[0].strip()
    if not name:
        raise _field(tag, "the LoRA name is empty")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise _field(tag, "the name is a file's stem in a LoRA folder, not a path")
    weight = 1.0
    if len(fields) == 2:
        text = fields[1].strip()
        try:
            weight = float(text)
        except ValueError:
            raise _field(tag, f"weight {text!r} is not a number") from None
        if not math.isfinite(weight):
            raise _field(tag, f"weight {text!r} is not a finite number")
    return LoraTag(name, weight)


def split_tags(prompt: str) -> tuple[str, tuple[LoraTag, ...]]:
    """The prompt without its LoRA tags, and the tags in the order written."""
    if not _OPEN.search(prompt):
        return prompt, ()
    tags: list[LoraTag] = []
    kept: list[str] = []
    position = 0
    while (found := _OPEN.search(prompt, position)) is not None:
        close = prompt.find(">", found.end())
        nested = _OPEN.search(prompt, found.end())
        if close < 0 or (nested is not None and nested.start() < close):
            end = close if close >= 0 else len(prompt)
            raise _field(prompt[found.start():min(end + 1, found.start() + 60)],
                         "it has no closing '>'")
        text = prompt[found.start():close + 1]
        tag = _parse_one(text, prompt[found.end():close])
        if any(seen.name == tag.name for seen in tags):
            raise InvalidArgument(f"LoRA {tag.name!r} is tagged twice in the prompt; give it "
                                  "once, with the weight you want")
        tags.append(tag)
        kept.append(prompt[position:found.start()])
        position = close + 1
    kept.append(prompt[position:])
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"the prompt tags {len(tags)} LoRAs; at most {MAX_TAGS} per request")
    parts = [part.strip() for part in kept]
    return " ".join(part for part in parts if part), tuple(tags)


def refuse_in_negative(negative: str) -> None:
    """The negative prompt rule (module docstring): no tags there."""
    if _OPEN.search(negative):
        raise InvalidArgument("LoRA tags go in the positive prompt only: a LoRA changes the "
                              "whole picture, so the negative prompt cannot take one")

"""Which reference images of a request reach the pipeline, and how.

LocalAI's host sends every reference of its image endpoint in ``ref_images``, in order;
LocalAI's own backend uses only the first. Some editing pipelines combine several: their
``image`` argument is a list of references rather than a batch, which no signature or type
hint tells apart (Kontext's ``image`` has the same type hint and treats a list as a batch),
so the classes are named here. Every other pipeline takes one picture: the first reference,
and the reply and the log name the ones left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

# Pipelines whose ``image`` is a list of references combined into one picture.
MULTI_REFERENCE_PIPELINES = frozenset({
    "QwenImageEditPlusPipeline",  # Qwen-Image-Edit-2509 and later: several input images
    "Flux2Pipeline",  # FLUX.2 [dev]: several reference images
    "Flux2KleinPipeline",  # FLUX.2 [klein]: the same reference handling
    "Flux2KleinKVPipeline",
})


def takes_reference_list(cls: type) -> bool:
    """Whether ``cls`` gets every reference, in order, as its ``image`` list."""
    return cls.__name__ in MULTI_REFERENCE_PIPELINES


def reference_fields(ref_images: Sequence[str]) -> list[tuple[str, str]]:
    """The non-empty references as ``(field name, value)``, in the request's order."""
    return [(f"ref_images[{i}]", ref) for i, ref in enumerate(ref_images) if ref]


def left_out_note(pipeline: str, fields: Sequence[str]) -> str:
    """The note (and log line) for references a one-picture pipeline does not take."""
    if not fields:
        return ""
    note = (f"{', '.join(fields)} left out: {pipeline} takes one reference image "
            "(the first)")
    log.info("GenerateImage: %s", note)
    return note

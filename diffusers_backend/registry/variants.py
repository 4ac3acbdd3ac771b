"""A pipeline's img2img / inpainting / text-to-image variant on the same weights: the one
place that decides which class serves another task (request variants, LoadModel's IMG2IMG and
ControlNet switch, the option check).

The classes come from the pipeline registry's copy of diffusers' AutoPipeline tables (read
from diffusers' sources by the dynamic loader); the variant itself is built with the
AutoPipeline's ``from_pipe``, which shares every component, so it costs no second copy of the
model.
"""

from __future__ import annotations

from typing import Any

# Editing pipelines whose inpainting class diffusers' AutoPipeline tables do not list: the
# host's inpainting layout (JSON src, [image, mask]) runs on it with the same weights.
EDIT_INPAINT = {
    "FluxKontextPipeline": "FluxKontextInpaintPipeline",
    "QwenImageEditPipeline": "QwenImageEditInpaintPipeline",
    "QwenImageEditPlusPipeline": "QwenImageEditInpaintPipeline",
    "Flux2KleinPipeline": "Flux2KleinInpaintPipeline",
}


def variant_classes(cls: type) -> list[type]:
    """The img2img and inpainting classes diffusers would switch ``cls`` to (may be none)."""
    import diffusers

    from diffusers_backend.registry.store import REGISTRY

    tables: dict[str, list[list[str]]] = REGISTRY.records()["auto"]
    keys = {key for items in tables.values() for key, name in items if name == cls.__name__}
    found = []
    for task in ("image-to-image", "inpainting"):
        for key, name in tables.get(task, []):
            if key in keys and hasattr(diffusers, name):
                found.append(getattr(diffusers, name))
                break
    return found


def make_variant(pipe: Any, task: str, **components: Any) -> Any:
    """``pipe`` turned into its ``task`` pipeline (``img2img``, ``inpaint``, ``txt2img``),
    optionally with extra components (a ControlNet). ValueError when diffusers has none."""
    import diffusers

    edit_inpaint = EDIT_INPAINT.get(type(pipe).__name__)
    if task == "inpaint" and edit_inpaint and hasattr(diffusers, edit_inpaint):
        variant = getattr(diffusers, edit_inpaint).from_pipe(pipe, **components)
        variant.set_progress_bar_config(disable=True)
        return variant
    auto = {"img2img": diffusers.AutoPipelineForImage2Image,
            "inpaint": diffusers.AutoPipelineForInpainting,
            "txt2img": diffusers.AutoPipelineForText2Image}[task]
    variant = auto.from_pipe(pipe, **components)
    if hasattr(variant, "set_progress_bar_config"):
        variant.set_progress_bar_config(disable=True)
    return variant

"""Words in pipeline class names: tokens, families and the tasks they name.

Pure string work, no imports of diffusers: the registry and the aliases are built from it.
"""

from __future__ import annotations

import re

AUTO_PREFIX = "AutoPipelineFor"
FALLBACK_PIPELINE = "DiffusionPipeline"

# --------------------------------------------------------------------------------------
# Task vocabulary: task *words* found in class names -> canonical task (not per pipeline).
# --------------------------------------------------------------------------------------

_TASK_WORDS: list[tuple[str, str]] = [
    (r"Img2Img|Image2Image|ImageToImage|I2I", "image-to-image"),
    (r"Text2Image|TextToImage|Txt2Img|T2I", "text-to-image"),
    (r"Text2Video|TextToVideo|Txt2Vid|T2V", "text-to-video"),
    (r"Image2Video|ImageToVideo|Img2Vid|I2V", "image-to-video"),
    (r"Video2Video|VideoToVideo|Vid2Vid|V2V", "video-to-video"),
    (r"Text2Audio|TextToAudio", "text-to-audio"),
    (r"Audio2Audio|AudioToAudio", "audio-to-audio"),
    (r"Inpainting|Inpaint|Fill", "inpainting"),
    (r"Depth2Img|DepthToImage", "depth-to-image"),
    (
        r"LatentUpscale|LatentUpsample|Upscaler|Upscale|Upsample|SuperResolution|SR",
        "upscaling",
    ),
    (r"ImageVariation", "image-variation"),
    (r"InstructPix2Pix|Edit", "image-editing"),
]
TASK_SYNONYMS: dict[str, list[str]] = {
    "text-to-image": ["txt2img", "text2image"],
    "image-to-image": ["img2img", "image2image"],
    "inpainting": ["inpaint"],
    "text-to-video": ["txt2vid", "text2video"],
    "image-to-video": ["img2vid", "image2video"],
    "video-to-video": ["vid2vid", "video2video"],
    "text-to-audio": ["txt2audio", "text2audio"],
    "upscaling": ["upscale", "super-resolution"],
    "depth-to-image": ["depth2img"],
    "image-editing": ["edit"],
}
_TASK_RE = re.compile(
    "(?:" + "|".join(f"(?P<t{i}>{pat})" for i, (pat, _) in enumerate(_TASK_WORDS)) + ")"
    r"(?=[A-Z0-9_]|$)"
)
# A plain family class (no task word) is a generator for its modality.
MODALITY_WORDS: list[tuple[str, str]] = [
    (r"Video|Animate", "text-to-video"),
    (r"Audio|Music", "text-to-audio"),
]
_TOKEN_RE = re.compile(r"[A-Z]+[0-9]*(?=[A-Z][a-z]|_|$)|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")


def norm(text: str) -> str:
    """Key used to compare aliases: lowercase alphanumerics only (hyphens/case ignored)."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def slug(text: str) -> str:
    """Alias display form: lowercase, hyphen separated, no stray punctuation."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tokens(camel: str) -> list[str]:
    """Split a CamelCase fragment into lowercase words; a lone capital joins the word before."""
    out: list[str] = []
    for part in camel.split("_"):
        for tok in _TOKEN_RE.findall(part):
            if len(tok) == 1 and tok.isupper() and out and out[-1][-1:].islower():
                out[-1] += tok.lower()
            else:
                out.append(tok.lower())
    return out


def name_stem(name: str) -> str:
    """Class name without the word ``Pipeline`` (wherever it appears)."""
    return name.replace("Pipeline", "")


def split_name(name: str) -> tuple[list[str], list[str], str]:
    """(family tokens, tasks named in the class name, text after the first task word)."""
    stem = name_stem(name)
    tasks: list[str] = []
    first = None
    for match in _TASK_RE.finditer(stem):
        idx = int(next(k for k, v in match.groupdict().items() if v)[1:])
        task = _TASK_WORDS[idx][1]
        if task not in tasks:
            tasks.append(task)
        if first is None:
            first = match
    family = stem[: first.start()] if first else stem
    rest = stem[first.end() :] if first else ""
    return tokens(family), tasks, rest


def camel_to_kebab(name: str) -> str:
    """``StableDiffusionXLPipeline`` -> ``stable-diffusion-xl-pipeline``.

    Uses the same word split as the alias rules (acronyms stay whole, digits stay with the
    word before them), so the kebab form of a class and its aliases agree. The public face
    also exports it as ``_camel_to_kebab``, the name LocalAI's loader tests call.
    """
    return slug("-".join(tokens(name)))


def extract_task_keywords(class_name: str) -> list[str]:
    """Aliases a pipeline class name implies, from the name alone (no registry, no import).

    The family (``StableDiffusionImg2ImgPipeline`` -> ``stable-diffusion``) and each task
    word in the name with its synonyms (``image-to-image``, ``img2img``...). A name without
    a task word (``WanPipeline``, ``StableVideoDiffusionPipeline``) does not say its task, so
    none is guessed: :func:`get_task_aliases` adds it from facts read from the sources
    (AutoPipeline mappings, whether the call takes a prompt). The public face also exports it
    as ``_extract_task_keywords``, the name LocalAI's loader tests call.
    """
    auto = class_name.startswith(AUTO_PREFIX)  # AutoPipelineFor<Task>: a task, no family
    family, tasks, _rest = split_name(class_name[len(AUTO_PREFIX) :] if auto else class_name)
    out: list[str] = []
    family_alias = "" if auto else "-".join(family)
    for alias in [family_alias, *(a for t in tasks for a in (t, *TASK_SYNONYMS.get(t, [])))]:
        alias = slug(alias)
        if alias and alias not in out:
            out.append(alias)
    return out


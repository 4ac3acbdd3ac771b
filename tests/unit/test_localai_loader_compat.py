"""Our diffusers_dynamic_loader.py keeps the module API LocalAI's own loader tests use.

LocalAI's ``backend/python/diffusers/test.py`` imports ``diffusers_dynamic_loader`` and calls,
besides the public functions, two name helpers: ``_camel_to_kebab`` and
``_extract_task_keywords``. The tests here pin their behaviour; LocalAI's test file itself
runs against our module in tests/e2e/test_localai_loader_tests.py (in another process, when
``LOCALAI_SRC`` points at a LocalAI checkout).
"""

from __future__ import annotations

import pytest

import diffusers_dynamic_loader as dl


@pytest.mark.parametrize("name, kebab", [
    ("StableDiffusionPipeline", "stable-diffusion-pipeline"),
    ("StableDiffusionXLPipeline", "stable-diffusion-xl-pipeline"),
    ("FluxPipeline", "flux-pipeline"),
    ("DiffusionPipeline", "diffusion-pipeline"),
    ("LTX2ImageToVideoPipeline", "ltx2-image-to-video-pipeline"),
    ("QwenImageEditPipeline", "qwen-image-edit-pipeline"),
    ("SD3Transformer2DModel", "sd3-transformer2-d-model"),
])
def test_camel_to_kebab_keeps_acronyms_and_digits_with_their_word(name, kebab):
    assert dl._camel_to_kebab(name) == kebab


@pytest.mark.parametrize("name, expected", [
    ("StableDiffusionPipeline", ["stable-diffusion"]),
    ("StableDiffusionImg2ImgPipeline",
     ["stable-diffusion", "image-to-image", "img2img", "image2image"]),
    ("StableDiffusionInpaintPipeline", ["stable-diffusion", "inpainting", "inpaint"]),
    ("StableDiffusionDepth2ImgPipeline", ["stable-diffusion", "depth-to-image", "depth2img"]),
    ("LTX2ImageToVideoPipeline", ["ltx2", "image-to-video", "img2vid", "image2video"]),
    ("QwenImageEditPipeline", ["qwen-image", "image-editing", "edit"]),
    ("AutoPipelineForImage2Image", ["image-to-image", "img2img", "image2image"]),
])
def test_extract_task_keywords_gives_family_then_tasks(name, expected):
    assert dl._extract_task_keywords(name) == expected


def test_extract_task_keywords_does_not_guess_a_task_the_name_does_not_say():
    """SVD is image-to-video and Wan text-to-video; neither name says so."""
    assert dl._extract_task_keywords("StableVideoDiffusionPipeline") == ["stable-video-diffusion"]
    assert dl._extract_task_keywords("WanPipeline") == ["wan"]


def test_name_only_aliases_are_real_aliases_of_the_class():
    """Every alias the name implies is a registry alias (compared as the registry compares them:
    case and hyphens ignored, so ``qwen-image`` is diffusers' ``qwenimage``) whose ranked list
    contains the class (another class of the task may rank first)."""
    aliases = dl.get_task_aliases()
    shown = {dl._norm(alias): alias for alias in aliases}
    for name in ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                 "StableDiffusionDepth2ImgPipeline", "LTX2ImageToVideoPipeline",
                 "QwenImageEditPipeline"):
        for alias in dl._extract_task_keywords(name):
            assert name in aliases[shown[dl._norm(alias)]], (name, alias)

"""Every ``pipeline_type`` LocalAI documents, ships in its gallery or handles by name resolves
here to its class and special loader (no server, imports only), case-insensitively, and an
unknown one fails with suggestions. That each family that can be built tiny offline loads and
generates over gRPC is tested in tests/e2e/test_pipeline_types.py.
"""

from __future__ import annotations

import pytest
from tiny_models import tiny_sd_path
from tiny_video_models import tiny_svd_path, tiny_text_to_video_path

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import special
from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.pipeline_loader import resolve_class
from diffusers_backend.loading.spec import LoadSpec

RESOLUTION = [
    # (pipeline_type, model folder or None, class it resolves to, loader)
    ("StableDiffusionPipeline", None, "StableDiffusionPipeline", "default_load"),
    ("StableDiffusionImg2ImgPipeline", None, "StableDiffusionImg2ImgPipeline", "default_load"),
    ("StableDiffusionDepth2ImgPipeline", None, "StableDiffusionDepth2ImgPipeline",
     "default_load"),
    ("DiffusionPipeline", tiny_svd_path, "StableVideoDiffusionPipeline", "load_svd"),
    ("StableDiffusionXLPipeline", None, "StableDiffusionXLPipeline", "default_load"),
    ("StableVideoDiffusionPipeline", None, "StableVideoDiffusionPipeline", "load_svd"),
    ("AutoPipelineForText2Image", None, "AutoPipelineForText2Image", "default_load"),
    ("VideoDiffusionPipeline", tiny_text_to_video_path, "TextToVideoSDPipeline",
     "default_load"),
    ("StableDiffusion3Pipeline", None, "StableDiffusion3Pipeline", "default_load"),
    ("FluxPipeline", None, "FluxPipeline", "load_flux"),
    ("FluxTransformer2DModel", None, "FluxTransformer2DModel", "load_flux_transformer"),
    ("SanaPipeline", None, "SanaPipeline", "load_sana"),
    ("ZImagePipeline", None, "ZImagePipeline", "default_load"),
    ("QwenImageEditPipeline", None, "QwenImageEditPipeline", "default_load"),
    ("LTX2ImageToVideoPipeline", None, "LTX2ImageToVideoPipeline", "default_load"),
    ("StableDiffusionUpscalePipeline", None, "StableDiffusionUpscalePipeline", "default_load"),
    ("ChromaPipeline", None, "ChromaPipeline", "default_load"),
    # handled by name in LocalAI's backend.py, not in its docs or gallery
    ("LTX2Pipeline", None, "LTX2Pipeline", "default_load"),
    ("WanPipeline", None, "WanPipeline", "load_wan"),
    ("WanImageToVideoPipeline", None, "WanImageToVideoPipeline", "load_wan"),
    ("StableDiffusionLatentUpscalePipeline", None, "StableDiffusionLatentUpscalePipeline",
     "default_load"),
]


@pytest.mark.parametrize("name, model, cls_name, loader", RESOLUTION,
                         ids=[row[0] for row in RESOLUTION])
def test_every_localai_name_resolves_to_its_class_and_loader(name, model, cls_name, loader):
    folder = str(model() if model else tiny_sd_path())
    cls = resolve_class(LoadSpec(model=folder, pipeline_type=name),
                        ModelRef(RefKind.FOLDER, folder))
    assert cls.__name__ == cls_name
    assert special.loader_for(cls.__name__) is getattr(special, loader)


def test_qwen_image_edit_resolves_but_is_not_built_here():
    """QwenImageEditPipeline (gallery: qwen-image-edit, -2509) only resolves here: its
    Qwen2VLProcessor needs a video processor, which transformers 5 only provides with
    torchvision, and torchvision is not installed (a tiny pipeline can neither be built nor
    loaded). The class and loader it would use are checked above; this pins the reason."""
    import transformers

    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert "dummy" in transformers.BaseVideoProcessor.__module__
    else:
        pytest.skip("torchvision is installed: a tiny Qwen-Image-Edit could be built now")


def test_legacy_names_are_case_insensitive_like_class_names():
    folder = str(tiny_text_to_video_path())
    ref = ModelRef(RefKind.FOLDER, folder)
    for name in ("fluxtransformer2dmodel", "FLUXTRANSFORMER2DMODEL"):
        assert resolve_class(LoadSpec(model=folder, pipeline_type=name), ref).__name__ == (
            "FluxTransformer2DModel")
    spec = LoadSpec(model=folder, pipeline_type="videodiffusionpipeline")
    assert resolve_class(spec, ref).__name__ == "TextToVideoSDPipeline"


def test_an_unknown_pipeline_type_still_fails_with_suggestions(tiny_sd):
    spec = LoadSpec(model=str(tiny_sd), pipeline_type="FluxTransformer3DModel")
    with pytest.raises(LoadError, match="pipeline_type 'FluxTransformer3DModel'"):
        resolve_class(spec, ModelRef(RefKind.FOLDER, str(tiny_sd)))

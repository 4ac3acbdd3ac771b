"""Editing families (issue 28) that cannot run here, checked on their load path and
signatures: Qwen-Image-Edit-2509's processor needs torchvision (no CPU build beside this
torch, docs/localai-parity.md "Packaging"), so its load is refused naming it; the classes
named as multi-reference exist in this diffusers and take ``image``."""

from __future__ import annotations

import inspect

import diffusers
import pytest

from diffusers_backend.errors import InvalidArgument, LoadError
from diffusers_backend.loading.dependencies import check_pipeline_dependencies, torchvision_problem
from diffusers_backend.tasks.references import MULTI_REFERENCE_PIPELINES, takes_reference_list


def test_qwen_image_edit_plus_is_refused_without_torchvision() -> None:
    with pytest.raises(LoadError, match="torchvision"):
        check_pipeline_dependencies(diffusers.QwenImageEditPlusPipeline,
                                    problem=lambda: "torchvision is not installed")
    if torchvision_problem():  # this CPU build: the real check refuses it too
        with pytest.raises(LoadError, match="torchvision"):
            check_pipeline_dependencies(diffusers.QwenImageEditPlusPipeline)


@pytest.mark.parametrize("name", sorted(MULTI_REFERENCE_PIPELINES))
def test_every_multi_reference_class_exists_and_takes_image(name: str) -> None:
    cls = getattr(diffusers, name)
    assert "image" in inspect.signature(cls.__call__).parameters
    assert takes_reference_list(cls)


@pytest.mark.parametrize("name", ["FluxKontextPipeline", "QwenImageEditPipeline",
                                  "StableDiffusionImg2ImgPipeline", "FluxFillPipeline"])
def test_one_picture_pipelines_get_one_reference(name: str) -> None:
    assert not takes_reference_list(getattr(diffusers, name))


def test_inline_images_may_exceed_a_paths_length() -> None:
    import backend_pb2
    from diffusers_backend.serving.request_limits import check_request

    inline = "data:image/png;base64," + "A" * 10_000
    check_request(backend_pb2.GenerateImageRequest(ref_images=[inline], src=inline), 100)
    with pytest.raises(InvalidArgument, match="ref_images is 10000 characters"):
        check_request(backend_pb2.GenerateImageRequest(ref_images=["/" * 10_000]), 100)

"""ControlNet end to end: the ControlNet pipeline is built on the loaded weights and the
control image (src, else ref_images[0]) visibly steers the picture; inpainting requests run
on the ControlNet inpainting pipeline made from the same weights."""

from __future__ import annotations

import grpc
import pytest
from features_support import (
    free,
    inpaint_request,
    load_ok,
    mean_diff,
    pixels,
    rpc_error,
    same,
    write_image,
)
from tiny_models import fixture_dir, tiny_controlnet_path


@pytest.fixture(scope="module")
def controlnet_backend(backend, tiny_sd):
    result = load_ok(backend, tiny_sd, ControlNet=str(tiny_controlnet_path()))
    assert "StableDiffusionControlNetPipeline" in result.message
    yield backend
    free(backend)


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controls")
    return (write_image(folder / "white.png", color="white"),
            write_image(folder / "black.png", color="black"),
            write_image(folder / "noise.png", seed=1))


def test_control_image_changes_the_output(controlnet_backend, controls, tmp_path):
    white, black, noise = controls
    for image in (white, black, noise):
        controlnet_backend.image(tmp_path / image.name, src=str(image), seed=8)
    assert mean_diff(tmp_path / "white.png", tmp_path / "black.png") > 1
    assert mean_diff(tmp_path / "white.png", tmp_path / "noise.png") > 1


def test_control_image_from_ref_images(controlnet_backend, controls, tmp_path):
    white, black, _ = controls
    controlnet_backend.image(tmp_path / "src.png", src=str(black), seed=8)
    controlnet_backend.image(tmp_path / "ref.png", ref_images=[str(black)], seed=8)
    assert same(tmp_path / "src.png", tmp_path / "ref.png")


def test_missing_control_image_is_invalid_argument(controlnet_backend, tmp_path):
    error = rpc_error(lambda: controlnet_backend.image(tmp_path / "x.png", seed=8))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ControlNet" in error.details() and "src" in error.details()


def test_inpainting_with_a_controlnet_model_uses_the_controlnet_inpaint_pipeline(
        controlnet_backend, controls, tmp_path):
    _, _, noise = controls
    request, _, inside = inpaint_request(tmp_path, noise)
    result = controlnet_backend.image(tmp_path / "out.png", src=str(request), seed=3)
    assert result.success and "StableDiffusionControlNetInpaintPipeline" in result.message
    out, original = pixels(tmp_path / "out.png"), pixels(noise)
    assert (out[~inside] == original[~inside]).all()  # unmasked pixels kept exactly
    assert abs(out[inside] - original[inside]).mean() > 5  # the masked square repainted


def test_controlnet_inpainting_control_image_from_third_reference(controlnet_backend, controls,
                                                                 tmp_path):
    """Default control: the picture with the mask blanked; ref_images[2] overrides it."""
    white, black, noise = controls
    request, mask, _ = inpaint_request(tmp_path, noise)
    for name, refs in (("default", []), ("white", [noise, mask, white]),
                       ("black", [noise, mask, black])):
        assert controlnet_backend.image(tmp_path / f"{name}.png", src=str(request), seed=3,
                                        ref_images=[str(r) for r in refs]).success
    assert mean_diff(tmp_path / "white.png", tmp_path / "black.png") > 1
    assert mean_diff(tmp_path / "default.png", tmp_path / "white.png") > 1


def test_controlnet_inpainting_missing_third_reference_is_not_found(controlnet_backend,
                                                                   controls, tmp_path):
    _, _, noise = controls
    request, mask, _ = inpaint_request(tmp_path, noise)
    error = rpc_error(lambda: controlnet_backend.image(
        tmp_path / "x.png", src=str(request),
        ref_images=[str(noise), str(mask), str(tmp_path / "missing.png")]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "ref_images[2]" in error.details() and "missing.png" in error.details()
    assert not (tmp_path / "x.png").exists()


def test_controlnet_relative_to_model_path_and_missing(backend, tiny_sd, tmp_path):
    tiny_controlnet_path()  # built (once) under the fixture folder used below
    load_ok(backend, tiny_sd, ModelPath=str(fixture_dir()), ControlNet="tiny-controlnet")
    result = backend.load(tiny_sd, ModelPath=str(tmp_path), ControlNet="no-such-controlnet")
    assert not result.success and "no-such-controlnet" in result.message
    free(backend)


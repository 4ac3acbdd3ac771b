"""Inpainting the way the host sends it: ``src`` is a JSON file {"image", "mask_image"}
(base64) and/or ``ref_images = [image, mask]``. It runs on the loaded SD weights through the
inpainting variant (StableDiffusionInpaintPipeline via from_pipe; the tiny UNet has 4 input
channels, so diffusers blends latents with the mask), and the original picture is pasted
back outside the mask: unmasked pixels are the original pixels EXACTLY (tolerance 0), while
the masked area is repainted and changes with the seed."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
from features_support import free, inpaint_request, load_ok, pixels, rpc_error, same, write_image


@pytest.fixture(scope="module")
def sd_backend(backend, tiny_sd):
    load_ok(backend, tiny_sd)
    yield backend
    free(backend)


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpaint")
    image = write_image(folder / "image.png", seed=3)
    src, mask_path, masked = inpaint_request(folder, image, box=(8, 16, 40, 48))
    return folder, image, mask_path, src, masked


def test_outside_the_mask_stays_original_inside_changes(sd_backend, inputs, tmp_path):
    folder, image, mask_path, src, masked = inputs
    refs = [str(image), str(mask_path)]
    one = sd_backend.image(tmp_path / "one.png", src=str(src), ref_images=refs, seed=1)
    sd_backend.image(tmp_path / "two.png", src=str(src), ref_images=refs, seed=2)
    assert "StableDiffusionInpaintPipeline" in one.message
    original = pixels(image)
    a, b = pixels(tmp_path / "one.png"), pixels(tmp_path / "two.png")
    assert np.array_equal(a[~masked], original[~masked])  # exact: tolerance 0
    assert np.array_equal(b[~masked], original[~masked])
    assert np.abs(a[masked] - b[masked]).mean() > 5  # the seed repaints the masked area
    assert np.abs(a[masked] - original[masked]).mean() > 5  # ...and it was repainted


def test_ref_images_fill_in_what_the_json_lacks(sd_backend, inputs, tmp_path):
    folder, image, mask_path, src, _ = inputs
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    sd_backend.image(tmp_path / "json.png", src=str(src), seed=4)
    sd_backend.image(tmp_path / "refs.png", src=str(empty),
                     ref_images=[str(image), str(mask_path)], seed=4)
    assert same(tmp_path / "json.png", tmp_path / "refs.png")


# A mask of another size is resized to the picture (test_editing_references.py).
@pytest.mark.parametrize("case", ["broken-json", "missing-mask"])
def test_bad_inpainting_input_is_invalid_argument(sd_backend, inputs, tmp_path, case):
    folder, image, mask_path, _, _ = inputs
    src = tmp_path / "bad.json"
    if case == "broken-json":
        src.write_text('{"image": "abc", ')
    else:
        src.write_text(json.dumps({"image": b64(image)}))
    error = rpc_error(lambda: sd_backend.image(tmp_path / "x.png", src=str(src), seed=1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert not (tmp_path / "x.png").exists()

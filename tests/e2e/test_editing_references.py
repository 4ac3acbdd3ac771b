"""Editing from reference images over gRPC (issue 28), with tiny random-weight pipelines:

* FluxKontextPipeline takes one reference: it changes the picture, and a ``data:`` URI gives
  exactly the picture the same file gives;
* Flux2KleinPipeline and Flux2Pipeline take a list: every reference reaches them, in order
  (the picture changes with a second reference and with their order, while the same request
  repeats exactly);
* FluxFillPipeline gets LocalAI's inpainting layout (``src`` a JSON file, ``ref_images =
  [original, mask]``) as image and mask_image; a mask of another size is resized, a mask that
  is not an image is INVALID_ARGUMENT naming it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import grpc
import numpy as np
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
from harness import REPO_ROOT


def edit_client(addr: str, *args: str) -> subprocess.CompletedProcess:
    """``diffusers-client edit`` against the shared (token-less) server."""
    env = {k: v for k, v in os.environ.items() if k != "LOCALAI_GRPC_AUTH_TOKEN"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "diffusers_backend.serving.client", "--addr",
                           addr, "edit", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


SMALL = {"width": 32, "height": 32, "seed": 3}


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    return (write_image(folder / "a.png", seed=1), write_image(folder / "b.png", seed=2),
            write_image(folder / "c.png", color="white"))


@pytest.fixture(scope="module")
def kontext(backend):
    from tiny_edit_models import tiny_flux_kontext_path

    load_ok(backend, tiny_flux_kontext_path())
    yield backend
    free(backend)


def test_kontext_reference_changes_the_picture_and_data_uri_is_the_file(
        kontext, pictures, tmp_path):
    a, b, c = pictures
    size = {"width": 32, "height": 32, "seed": 5}
    plain = kontext.image(tmp_path / "plain.png", **size)
    kontext.image(tmp_path / "a.png", ref_images=[str(a)], **size)
    inline = kontext.image(tmp_path / "inline.png", ref_images=[data_uri(a)], **size)
    three = kontext.image(tmp_path / "three.png", ref_images=[str(a), str(b), str(c)], **size)
    assert "from the input image with FluxKontextPipeline" in inline.message
    assert "FluxKontextPipeline" not in plain.message
    assert pixels(tmp_path / "a.png").shape == (32, 32, 3)  # the request's size, not 1024
    assert not same(tmp_path / "plain.png", tmp_path / "a.png")
    assert same(tmp_path / "a.png", tmp_path / "inline.png")  # exactly the same picture
    # One picture: the first reference; the others are named as left out.
    assert "ref_images[1], ref_images[2] left out" in three.message
    assert same(tmp_path / "three.png", tmp_path / "a.png")


def test_kontext_takes_the_inpainting_layout_through_kontext_inpaint(kontext, pictures,
                                                                      tmp_path):
    a, _, _ = pictures
    src, mask_path, masked = inpaint_request(tmp_path, a, box=(16, 16, 48, 48))
    reply = kontext.image(tmp_path / "out.png", src=str(src),
                          ref_images=[str(a), str(mask_path)], seed=1)
    assert "inpainted with FluxKontextInpaintPipeline" in reply.message
    out = pixels(tmp_path / "out.png")
    assert np.array_equal(out[~masked], pixels(a)[~masked])
    assert np.abs(out[masked] - pixels(a)[masked]).mean() > 0


def test_bad_data_uri_is_invalid_argument(kontext, tmp_path):
    for value in ("data:image/png;base64,@@@@", "data:image/png,rawbytes",
                  "data:image/png;base64," + base64.b64encode(b"not an image").decode()):
        error = rpc_error(lambda v=value: kontext.image(tmp_path / "x.png", ref_images=[v]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "ref_images[0]" in error.details()
        assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def klein(backend):
    from tiny_edit_models import tiny_flux2_klein_path

    load_ok(backend, tiny_flux2_klein_path())
    yield backend
    free(backend)


def test_list_taking_pipeline_receives_every_reference_in_order(klein, pictures, tmp_path):
    a, b, _ = pictures
    one = klein.image(tmp_path / "a.png", ref_images=[str(a)], **SMALL)
    both = klein.image(tmp_path / "ab.png", ref_images=[str(a), str(b)], **SMALL)
    klein.image(tmp_path / "ab2.png", ref_images=[str(a), data_uri(b)], **SMALL)
    klein.image(tmp_path / "ba.png", ref_images=[str(b), str(a)], **SMALL)
    assert "1 reference image(s) combined" in one.message
    assert "2 reference image(s) combined" in both.message
    assert "Flux2KleinPipeline" in both.message
    assert same(tmp_path / "ab.png", tmp_path / "ab2.png")  # deterministic: differences count
    assert mean_diff(tmp_path / "a.png", tmp_path / "ab.png") > 0  # the second one arrived
    assert mean_diff(tmp_path / "ab.png", tmp_path / "ba.png") > 0  # in the order sent
    done = edit_client(klein.addr, "a red cube", "--ref", str(a), "--ref", str(b), "--seed", "3",
                       "--width", "32", "--height", "32", "--steps", "2",
                       "-o", str(tmp_path / "client.png"))
    assert done.returncode == 0, done.stderr
    assert "2 reference image(s) combined" in done.stdout
    assert same(tmp_path / "ab.png", tmp_path / "client.png")


def test_flux2_receives_every_reference(backend, pictures, tmp_path):
    from tiny_edit_models import tiny_flux2_path

    a, b, _ = pictures
    load_ok(backend, tiny_flux2_path(), Options=["max_sequence_length:32"])
    try:
        one = backend.image(tmp_path / "a.png", ref_images=[str(a)], **SMALL)
        both = backend.image(tmp_path / "ab.png", ref_images=[str(a), str(b)], **SMALL)
    finally:
        free(backend)
    assert "from the input image with Flux2Pipeline" in one.message
    assert "2 reference image(s) combined" in both.message
    assert mean_diff(tmp_path / "a.png", tmp_path / "ab.png") > 0


@pytest.fixture(scope="module")
def fill(backend):
    from tiny_edit_models import tiny_flux_fill_path

    load_ok(backend, tiny_flux_fill_path())
    yield backend
    free(backend)


def test_localai_inpainting_layout_reaches_fill_with_its_mask(fill, pictures, tmp_path):
    a, _, _ = pictures
    src, mask_path, masked = inpaint_request(tmp_path, a, box=(16, 16, 48, 48))
    refs = [str(a), str(mask_path)]
    one = fill.image(tmp_path / "one.png", src=str(src), ref_images=refs, seed=1)
    fill.image(tmp_path / "two.png", src=str(src), ref_images=refs, seed=2)
    inline = fill.image(tmp_path / "inline.png", src=data_uri_json(src), seed=1)
    assert "inpainted with FluxFillPipeline" in one.message
    assert "inpainted with FluxFillPipeline" in inline.message
    first, second = pixels(tmp_path / "one.png"), pixels(tmp_path / "two.png")
    assert np.array_equal(first[~masked], pixels(a)[~masked])
    assert np.abs(first[masked] - second[masked]).mean() > 0  # the mask area is repainted
    assert same(tmp_path / "one.png", tmp_path / "inline.png")
    done = edit_client(fill.addr, "a red cube", "--ref", str(a), "--mask", str(mask_path),
                       "--seed", "1", "--width", "64", "--height", "64", "--steps", "2",
                       "-o", str(tmp_path / "client.png"))
    assert done.returncode == 0, done.stderr
    assert "inpainted with FluxFillPipeline" in done.stdout
    assert same(tmp_path / "one.png", tmp_path / "client.png")


def data_uri_json(path) -> str:
    return "data:application/json;base64," + base64.b64encode(path.read_bytes()).decode()


def test_mask_of_another_size_is_resized(fill, pictures, tmp_path):
    a, _, _ = pictures
    big = tmp_path / "big.png"
    from PIL import Image

    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    mask.save(big)
    src = tmp_path / "src.json"
    src.write_text(json.dumps({"image": base64.b64encode(a.read_bytes()).decode(),
                               "mask_image": base64.b64encode(big.read_bytes()).decode()}))
    fill.image(tmp_path / "out.png", src=str(src), seed=1)
    out, original = pixels(tmp_path / "out.png"), pixels(a)
    assert np.array_equal(out[:8, :8], original[:8, :8])  # outside the (scaled) mask
    assert np.abs(out[24:40, 24:40] - original[24:40, 24:40]).mean() > 0


def test_mask_that_is_not_an_image_is_invalid_argument(fill, pictures, tmp_path):
    a, _, _ = pictures
    junk = tmp_path / "mask.txt"
    junk.write_text("this is no mask")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    error = rpc_error(lambda: fill.image(tmp_path / "x.png", src=str(empty),
                                         ref_images=[str(a), str(junk)]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "ref_images[1]" in error.details()
    assert not (tmp_path / "x.png").exists()

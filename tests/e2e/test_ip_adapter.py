"""IP-Adapter over gRPC (issue 28) on the tiny SD pipeline with a tiny random IP-Adapter in
h94's layout (tests/tiny_edit_models.py): loaded at LoadModel from the ``ip_adapter`` option,
the request's reference changes the picture, and a request without one gives exactly the
plain picture of the model without the adapter, also right after a request that had one."""

from __future__ import annotations

import shutil

import pytest
from features_support import free, load_ok, log_since, same, write_image

SMALL = {"width": 32, "height": 32, "seed": 7}


@pytest.fixture(scope="module")
def adapter():
    from tiny_edit_models import tiny_sd_ip_adapter_path

    return tiny_sd_ip_adapter_path() / "ip-adapter_tiny.safetensors"


def test_reference_steers_and_no_reference_is_the_plain_picture(backend, tiny_sd, adapter,
                                                                  tmp_path):
    a = write_image(tmp_path / "a.png", seed=1)
    b = write_image(tmp_path / "b.png", color="white")
    try:
        load_ok(backend, tiny_sd)
        backend.image(tmp_path / "plain.png", **SMALL)
        mark = len(backend.log())
        load_ok(backend, tiny_sd, Options=[f"ip_adapter:{adapter}", "ip_adapter_scale:1.0"])
        assert "IP-Adapter ip-adapter_tiny.safetensors x1.0" in log_since(backend, mark)
        off = backend.image(tmp_path / "off.png", **SMALL)
        on = backend.image(tmp_path / "a-ref.png", **SMALL, ref_images=[str(a)])
        backend.image(tmp_path / "b-ref.png", **SMALL, ref_images=[str(b)])
        backend.image(tmp_path / "off-again.png", **SMALL)
    finally:
        free(backend)
    assert "IP-Adapter off" in off.message and "IP-Adapter image: ref_images[0]" in on.message
    assert same(tmp_path / "plain.png", tmp_path / "off.png")
    assert same(tmp_path / "plain.png", tmp_path / "off-again.png")  # nothing left behind
    assert not same(tmp_path / "plain.png", tmp_path / "a-ref.png")
    assert not same(tmp_path / "a-ref.png", tmp_path / "b-ref.png")


def test_pickle_adapter_is_refused_under_safetensors(backend, tiny_sd, adapter, tmp_path):
    pickled = tmp_path / "ip-adapter.bin"
    shutil.copyfile(adapter, pickled)
    try:
        result = backend.load(tiny_sd, Options=[f"ip_adapter:{pickled}"])
    finally:
        free(backend)
    assert not result.success
    assert "SAFETENSORS" in result.message and "ip-adapter.bin" in result.message

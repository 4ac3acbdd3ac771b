"""Prompt weighting (``COMPEL=1``, A1111 syntax ``(word:1.3)``) over gRPC: one weighted
generation on each family (SD3, Flux, Chroma) on a real server. The parser and the
embeddings are tested in process in tests/unit/test_prompt_weighting.py."""

from __future__ import annotations

import numpy as np
import pytest
from features_support import load_ok
from harness import start_backend
from PIL import Image
from tiny_image_models import tiny_chroma_path, tiny_flux_path, tiny_sd3_path


@pytest.fixture(scope="module")
def compel_server(tmp_path_factory):
    server = start_backend(tmp_path_factory.mktemp("weighted"), env={"COMPEL": "1"})
    yield server
    server.stop()


@pytest.mark.parametrize("model", [tiny_sd3_path, tiny_flux_path, tiny_chroma_path],
                         ids=["sd3", "flux", "chroma"])
def test_weighted_generation_over_grpc(compel_server, model, tmp_path):
    load_ok(compel_server, model())
    outputs = {}
    for name, prompt in (("plain", "a red cube"), ("weighted", "(a red cube:8)"),
                         ("one", "a (red:1.0) cube")):
        reply = compel_server.image(tmp_path / f"{name}.png", positive_prompt=prompt, seed=5,
                                    width=32, height=32)
        assert reply.success, reply.message
        with Image.open(tmp_path / f"{name}.png") as image:
            outputs[name] = np.asarray(image.convert("RGB"), dtype=np.int16)
    # Weight 1 is the plain prompt (up to float rounding); weight 8 changes the picture
    # (a tiny random model reacts weakly to its text tokens, but it does).
    one = np.abs(outputs["one"] - outputs["plain"])
    weighted = np.abs(outputs["weighted"] - outputs["plain"])
    assert one.max() <= 1
    assert weighted.mean() > one.mean()

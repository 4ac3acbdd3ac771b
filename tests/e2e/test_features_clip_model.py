"""CLIPModel / CLIPSubfolder (YAML `diffusers.clip_model`, `clip_subfolder`): a replacement
CLIP text encoder loaded into the pipeline, from a folder (relative to ModelPath) or Hub id."""

from __future__ import annotations

from pathlib import Path

import pytest
from features_support import load_ok, mean_diff, same
from tiny_models import cached_build, tiny_clip_text_encoder


def _build_other_encoder(path: Path) -> None:
    tiny_clip_text_encoder(seed=7).save_pretrained(path)


@pytest.fixture(scope="module")
def other_encoder() -> Path:
    """A tiny CLIP text encoder with other random weights than the tiny SD pipeline's."""
    return cached_build("tiny-clip-text-encoder-seed7", _build_other_encoder)


pytestmark = pytest.mark.usefixtures("free_backend_after")


def _generate(server, dst: Path) -> Path:
    assert server.image(dst, positive_prompt="a red cube", seed=4).success
    return dst


def test_clip_model_replaces_the_text_encoder(backend, tiny_sd, other_encoder, tmp_path):
    load_ok(backend, tiny_sd)
    default = _generate(backend, tmp_path / "default.png")
    load_ok(backend, tiny_sd, CLIPModel=str(other_encoder))
    replaced = _generate(backend, tmp_path / "replaced.png")
    assert mean_diff(default, replaced) > 0.05


def test_clip_model_relative_to_model_path(backend, tiny_sd, other_encoder, tmp_path):
    load_ok(backend, tiny_sd, CLIPModel=str(other_encoder))
    absolute = _generate(backend, tmp_path / "absolute.png")
    load_ok(backend, tiny_sd, CLIPModel=other_encoder.name, ModelPath=str(other_encoder.parent))
    relative = _generate(backend, tmp_path / "relative.png")
    assert same(absolute, relative)


def test_clip_subfolder_reads_the_encoder_inside_a_pipeline_folder(backend, tiny_sd, tmp_path):
    """The pipeline's own text_encoder/ loaded through CLIPModel + CLIPSubfolder changes
    nothing: proof that the subfolder is the one read."""
    load_ok(backend, tiny_sd)
    default = _generate(backend, tmp_path / "default.png")
    load_ok(backend, tiny_sd, CLIPModel=str(tiny_sd), CLIPSubfolder="text_encoder")
    same_encoder = _generate(backend, tmp_path / "same.png")
    assert same(default, same_encoder)


def test_missing_clip_model_fails_the_load_by_name(backend, tiny_sd, tmp_path):
    result = backend.load(tiny_sd, CLIPModel=str(tmp_path / "no-such-clip"))
    assert not result.success
    assert "could not load CLIP model" in result.message and "no-such-clip" in result.message

"""LoRA end to end: LoraAdapter (+LoraScale), LoraAdapters + LoraScales, paths relative to
ModelPath, folders of diffusers LoRA weights, and clear failures; all offline."""

from __future__ import annotations

import shutil

import pytest
from features_support import load_ok, mean_diff, same
from tiny_models import fixture_dir, tiny_controlnet_path, tiny_lora2_path, tiny_lora_path

pytestmark = pytest.mark.usefixtures("free_backend_after")


@pytest.fixture(scope="module")
def base_image(backend, tiny_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "base.png"
    load_ok(backend, tiny_sd)
    backend.image(path, seed=21)
    return path


def test_lora_changes_the_image_and_its_scale_matters(backend, tiny_sd, base_image, tmp_path):
    load_ok(backend, tiny_sd, LoraAdapter=str(tiny_lora_path()))  # LoraScale unset: 1.0
    backend.image(tmp_path / "default.png", seed=21)
    for scale in (0.5, 1.0):
        load_ok(backend, tiny_sd, LoraAdapter=str(tiny_lora_path()), LoraScale=scale)
        backend.image(tmp_path / f"s{scale}.png", seed=21)
    assert mean_diff(base_image, tmp_path / "s1.0.png") > 1
    assert mean_diff(tmp_path / "s0.5.png", tmp_path / "s1.0.png") > 0.5
    assert mean_diff(base_image, tmp_path / "s0.5.png") > 0.5
    assert same(tmp_path / "default.png", tmp_path / "s1.0.png")


def test_two_adapters_with_scales_relative_to_model_path(backend, tiny_sd, base_image, tmp_path):
    tiny_lora_path(), tiny_lora2_path()  # built (once) under the fixture folder used below
    models = fixture_dir()
    load_ok(backend, tiny_sd, ModelPath=str(models),
            LoraAdapters=["tiny-lora/tiny_lora.safetensors", "tiny-lora2/tiny_lora2.safetensors"],
            LoraScales=[0.8, 0.6])
    backend.image(tmp_path / "both.png", seed=21)
    load_ok(backend, tiny_sd, ModelPath=str(models),
            LoraAdapters=["tiny-lora/tiny_lora.safetensors"], LoraScales=[0.8])
    backend.image(tmp_path / "first.png", seed=21)
    load_ok(backend, tiny_sd, ModelPath=str(models),
            LoraAdapters=["tiny-lora/tiny_lora.safetensors", "tiny-lora2/tiny_lora2.safetensors"],
            LoraScales=[0.8, 0.2])
    backend.image(tmp_path / "both-weaker.png", seed=21)
    assert mean_diff(base_image, tmp_path / "both.png") > 1
    assert mean_diff(tmp_path / "first.png", tmp_path / "both.png") > 0.5
    assert mean_diff(tmp_path / "both.png", tmp_path / "both-weaker.png") > 0.2


def test_lora_folder_loads_like_the_file(backend, tiny_sd, tmp_path):
    folder = tmp_path / "models" / "my-lora"
    folder.mkdir(parents=True)
    shutil.copy(tiny_lora_path(), folder / "pytorch_lora_weights.safetensors")
    load_ok(backend, tiny_sd, ModelPath=str(tmp_path / "models"), LoraAdapter="my-lora")
    backend.image(tmp_path / "folder.png", seed=21)
    load_ok(backend, tiny_sd, LoraAdapter=str(tiny_lora_path()))
    backend.image(tmp_path / "file.png", seed=21)
    assert same(tmp_path / "folder.png", tmp_path / "file.png")


def test_missing_lora_fails_the_load_naming_it(backend, tiny_sd, tmp_path):
    result = backend.load(tiny_sd, ModelPath=str(tmp_path), LoraAdapter="nowhere.safetensors")
    assert not result.success
    assert "nowhere.safetensors" in result.message and "not found" in result.message


def test_incompatible_lora_file_fails_the_load_naming_it(backend, tiny_sd, tmp_path):
    not_a_lora = tiny_controlnet_path() / "diffusion_pytorch_model.safetensors"
    result = backend.load(tiny_sd, LoraAdapters=[str(not_a_lora)])
    assert not result.success
    assert "diffusion_pytorch_model.safetensors" in result.message
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    result = backend.load(tiny_sd, LoraAdapter=str(garbage))
    assert not result.success and "broken.safetensors" in result.message


def test_scales_must_match_adapters(backend, tiny_sd):
    result = backend.load(tiny_sd, LoraAdapters=[str(tiny_lora_path()), str(tiny_lora2_path())],
                          LoraScales=[0.5])
    assert not result.success and "lora_scales" in result.message

"""Tests for diffusers_dynamic_loader: discovery, aliases, resolution, disk cache, loading.

All offline (HF_HUB_OFFLINE=1) and isolated from the user's cache (DIFFUSERS_LOADER_CACHE_DIR
points into a tmp dir). What needs another interpreter (the registry against a full
import-every-pipeline scan, the disk cache read by a fresh process) is tested in
tests/e2e/test_dynamic_loader_registry.py.
"""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path

import pytest

import diffusers_dynamic_loader as dl
from diffusers_backend.registry.store import REGISTRY

# ----------------------------------------------------------------------------- helpers


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Minimal valid .safetensors file (float32 zeros) without torch."""
    header, offset, blobs = {}, 0, []
    for key, shape in shapes.items():
        n = 4
        for dim in shape:
            n *= dim
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        blobs.append(b"\0" * n)
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test uses a private cache dir, never the Hub, and starts from clean in-process
    caches."""
    cache = tmp_path_factory.mktemp("loader-cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DIFFUSERS_LOADER_CACHE_DIR", str(cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        dl.clear_caches()
        yield cache
        dl.clear_caches()


# ----------------------------------------------------------------------------- registry


def test_registry_is_a_cached_read_only_lazy_mapping():
    from collections.abc import Mapping

    reg = dl.get_pipeline_registry()
    assert isinstance(reg, Mapping) and not isinstance(reg, dict)
    assert reg is dl.get_pipeline_registry()
    with pytest.raises((AttributeError, TypeError)):
        reg.pop("StableDiffusionPipeline")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        reg["Mine"] = object  # type: ignore[index]
    assert "StableDiffusionPipeline" in reg and "DiffusionPipeline" in reg
    cls = reg["StableDiffusionPipeline"]
    assert isinstance(cls, type) and cls.__name__ == "StableDiffusionPipeline"
    assert reg.is_loaded("StableDiffusionPipeline")
    assert reg.get("NoSuchPipeline") is None


def test_available_lists_sorted():
    pipes = dl.get_available_pipelines()
    tasks = dl.get_available_tasks()
    assert pipes == sorted(pipes) and len(pipes) > 250
    assert tasks == sorted(tasks)
    for alias in ("text-to-image", "txt2img", "image-to-image", "img2img", "inpainting"):
        assert alias in tasks


# ----------------------------------------------------------------------------- aliases


@pytest.mark.parametrize(
    "alias, expected",
    [
        ("text-to-image", "AutoPipelineForText2Image"),
        ("txt2img", "AutoPipelineForText2Image"),
        ("image-to-image", "AutoPipelineForImage2Image"),
        ("img2img", "AutoPipelineForImage2Image"),
        ("inpainting", "AutoPipelineForInpainting"),
        ("inpaint", "AutoPipelineForInpainting"),
        ("stable-diffusion", "StableDiffusionPipeline"),
        ("stable-diffusion-xl", "StableDiffusionXLPipeline"),
        ("Stable_Diffusion_XL", "StableDiffusionXLPipeline"),
        ("flux", "FluxPipeline"),
        ("upscaling", "StableDiffusionUpscalePipeline"),
    ],
)
def test_alias_ranking(alias, expected):
    assert dl.resolve_pipeline_name(task=alias) == expected


def test_class_name_rules_give_family_and_task():
    aliases = dl.get_task_aliases()
    assert "StableDiffusionXLImg2ImgPipeline" in aliases["stable-diffusion-xl"]
    assert "StableDiffusionXLImg2ImgPipeline" in aliases["img2img"]
    assert "StableDiffusionXLInpaintPipeline" in aliases["inpainting"]
    assert "CogVideoXImageToVideoPipeline" in aliases["image-to-video"]
    # second best after the AutoPipeline: diffusers' own first choice, not scan order
    assert aliases["text-to-image"][1] == "StableDiffusionPipeline"
    assert aliases["img2img"][1] == "StableDiffusionImg2ImgPipeline"
    assert aliases["inpainting"][1] == "StableDiffusionInpaintPipeline"


def test_no_deprecated_pipeline_leads_an_alias():
    records = dl._get_records()["pipelines"]
    for alias, names in dl.get_task_aliases().items():
        if any(not records[n]["deprecated"] for n in names):
            assert not records[names[0]]["deprecated"], (alias, names[0])


def test_every_alias_resolves_and_is_clean():
    reg = dl.get_pipeline_registry()
    aliases = dl.get_task_aliases()
    assert aliases is dl.get_task_aliases()
    for alias, names in aliases.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", alias), alias
        assert names and all(n in reg for n in names), alias
        assert dl.resolve_pipeline_name(task=alias) == names[0]
        assert "DiffusionPipeline" not in names
    # a sample really imports
    for alias in ("txt2img", "stable-diffusion", "flux", "inpaint"):
        cls = dl.resolve_pipeline_class(task=alias)
        assert cls.__name__ == aliases[alias][0]


# ----------------------------------------------------------------------------- errors


def test_unknown_class_error_suggests_and_is_short():
    with pytest.raises(ValueError) as err:
        dl.resolve_pipeline_class(class_name="StableDifusionXLPipeline")
    msg = str(err.value)
    assert "Unknown pipeline class" in msg and "Available pipelines" in msg
    assert "StableDiffusionXLPipeline" in msg
    assert "more; see get_available_pipelines()" in msg
    assert len(msg) < 600


def test_unknown_task_error():
    with pytest.raises(ValueError) as err:
        dl.resolve_pipeline_class(task="txt2imgg")
    msg = str(err.value)
    assert "Unknown task" in msg and "Available tasks" in msg and "txt2img" in msg
    assert len(msg) < 600


@pytest.mark.parametrize("typo,meant", [
    ("ZImagePipelin", "ZImagePipeline"),  # alphabetically far down the list of classes
    ("stable-difusion-xl", "stable-diffusion-xl"),  # a family alias
    ("txt2imgg", "txt2img"),  # a task alias
])
def test_closest_pipeline_names_put_the_meant_name_first(typo, meant):
    from diffusers_backend.registry.resolution import closest_pipeline_names

    assert closest_pipeline_names(typo)[0] == meant


def test_an_unknown_pipeline_type_says_did_you_mean_with_classes_and_tasks(tmp_path):
    """LoadModel's message for a pipeline_type that is neither class nor task: the closest
    classes and tasks first, not the start of an alphabetical list."""
    from diffusers_backend.errors import LoadError
    from diffusers_backend.loading.model_ref import ModelRef, RefKind
    from diffusers_backend.loading.pipeline_loader import resolve_class
    from diffusers_backend.loading.spec import LoadSpec

    ref = ModelRef(RefKind.FOLDER, str(tmp_path))
    with pytest.raises(LoadError) as err:
        resolve_class(LoadSpec(model=str(tmp_path), pipeline_type="StableDifusionXLPipelin"), ref)
    msg = str(err.value)
    assert "pipeline_type 'StableDifusionXLPipelin' is neither" in msg
    assert "did you mean StableDiffusionXLPipeline," in msg
    assert "AltDiffusion" not in msg and len(msg) < 400
    with pytest.raises(LoadError, match="did you mean text-to-video"):
        resolve_class(LoadSpec(model=str(tmp_path), pipeline_type="text-to-vidoe"), ref)


def test_nothing_given_error():
    with pytest.raises(ValueError, match="Must provide at least one of"):
        dl.resolve_pipeline_class()


def test_class_lookup_case_insensitive():
    assert dl.resolve_pipeline_name(class_name="stablediffusionpipeline") == (
        "StableDiffusionPipeline"
    )
    assert dl.resolve_pipeline_class(class_name="STABLEDIFFUSIONPIPELINE").__name__ == (
        "StableDiffusionPipeline"
    )


def test_pipeline_info():
    info = dl.get_pipeline_info("StableDiffusionPipeline")
    assert info["name"] == "StableDiffusionPipeline"
    assert info["supports_single_file"] is True
    assert "stable-diffusion" in info["aliases"] and "text-to-image" in info["aliases"]
    assert info["docstring"]
    auto = dl.get_pipeline_info("autopipelinefortext2image")
    assert auto["name"] == "AutoPipelineForText2Image"
    assert auto["supports_single_file"] is False
    assert "text-to-image" in auto["aliases"]
    with pytest.raises(ValueError, match="Unknown pipeline"):
        dl.get_pipeline_info("NoSuchPipeline")


def test_discover_other_classes():
    schedulers = dl.discover_diffusers_classes("SchedulerMixin")
    assert schedulers is dl.discover_diffusers_classes("SchedulerMixin")
    assert "DDIMScheduler" in schedulers and "SchedulerMixin" in schedulers
    names = dl.get_available_classes("SchedulerMixin")
    assert names == sorted(names) and "EulerDiscreteScheduler" in names
    assert "SchedulerMixin" not in dl.discover_diffusers_classes("SchedulerMixin", False)
    with pytest.raises(ValueError):
        dl.discover_diffusers_classes("NoSuchBaseClass")


# ----------------------------------------------------------------------------- model ids


def test_model_id_local_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert dl.resolve_pipeline_class(model_id=str(folder)).__name__ == "StableDiffusionPipeline"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "MyCustomPipeline"}))
    assert dl.resolve_pipeline_name(model_id=str(odd)) == "DiffusionPipeline"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert dl.resolve_pipeline_name(model_id=str(empty)) == "DiffusionPipeline"


def test_model_id_single_file(tmp_path):
    sdxl = tmp_path / "sdxl.safetensors"
    key = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
    write_safetensors(sdxl, {key: (2,)})
    assert dl.resolve_pipeline_name(model_id=str(sdxl)) == "StableDiffusionXLPipeline"
    other = tmp_path / "unknown.safetensors"
    write_safetensors(other, {"some.weight": (2, 2)})
    assert dl.resolve_pipeline_name(model_id=str(other)) == "StableDiffusionPipeline"


def test_model_id_hub_cache_then_offline_fallback(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-sdxl"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    assert dl.resolve_pipeline_name(model_id="acme/tiny-sdxl") == "StableDiffusionXLPipeline"
    start = time.monotonic()
    assert dl.resolve_pipeline_name(model_id="acme/not-cached") == "DiffusionPipeline"
    assert time.monotonic() - start < 2.0
    # cached per process
    assert REGISTRY.model_id_class("acme/tiny-sdxl") == "StableDiffusionXLPipeline"


# ----------------------------------------------------------------------------- disk cache


def test_disk_cache_unwritable_is_harmless(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DIFFUSERS_LOADER_CACHE_DIR", str(blocker / "cache"))
    dl.clear_caches()
    try:
        with caplog.at_level("WARNING", logger="diffusers_dynamic_loader"):
            assert dl.resolve_pipeline_name(task="txt2img") == "AutoPipelineForText2Image"
        assert any("Cannot write" in r.getMessage() for r in caplog.records)
    finally:
        dl.clear_caches()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFUSERS_LOADER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dl._cache_dir() == tmp_path / "localai-diffusers"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dl._cache_dir() == Path.home() / ".cache" / "localai-diffusers"


# ----------------------------------------------------------------------------- loading


def test_load_by_class_task_and_model_id(tiny_sd):
    import torch
    from diffusers import StableDiffusionPipeline

    by_class = dl.load_diffusers_pipeline(
        class_name="StableDiffusionPipeline", model_id=str(tiny_sd), torch_dtype=torch.bfloat16
    )
    assert isinstance(by_class, StableDiffusionPipeline)
    assert by_class.unet.dtype == torch.bfloat16  # kwargs reach from_pretrained
    by_task = dl.load_diffusers_pipeline(task="txt2img", model_id=str(tiny_sd))
    assert isinstance(by_task, StableDiffusionPipeline)
    by_id = dl.load_diffusers_pipeline(model_id=str(tiny_sd))
    assert type(by_id) is StableDiffusionPipeline
    assert dl.resolve_pipeline_class(model_id=str(tiny_sd)) is StableDiffusionPipeline


def test_load_requires_model_id():
    with pytest.raises(ValueError, match="model_id is required"):
        dl.load_diffusers_pipeline(class_name="StableDiffusionPipeline")
    with pytest.raises(ValueError, match="Must provide at least one of"):
        dl.load_diffusers_pipeline()
    with pytest.raises(ValueError, match="Unknown pipeline class"):
        dl.load_diffusers_pipeline(class_name="NoSuchPipeline")


def test_single_file_refused_for_class_without_it(tiny_sd):
    with pytest.raises(ValueError) as err:
        dl.load_diffusers_pipeline(
            class_name="AutoPipelineForText2Image", model_id=str(tiny_sd), from_single_file=True
        )
    assert "AutoPipelineForText2Image" in str(err.value)
    assert "from_single_file" in str(err.value)


def test_load_failure_wrapped(tmp_path):
    nowhere = tmp_path / "no-such-model"
    with pytest.raises(dl.PipelineLoadError) as err:
        dl.load_diffusers_pipeline(class_name="StableDiffusionPipeline", model_id=str(nowhere))
    assert "StableDiffusionPipeline" in str(err.value) and str(nowhere) in str(err.value)
    assert err.value.__cause__ is not None
    missing = tmp_path / "missing.safetensors"
    write_safetensors(missing, {"some.weight": (2, 2)})
    with pytest.raises(dl.PipelineLoadError) as err:
        dl.load_diffusers_pipeline(
            class_name="StableDiffusionPipeline", model_id=str(missing), from_single_file=True
        )
    assert "StableDiffusionPipeline" in str(err.value) and "missing.safetensors" in str(err.value)
    assert isinstance(err.value, RuntimeError)

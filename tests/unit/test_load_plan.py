"""LoadModel's stages themselves: the plan *resolve* builds is frozen and names every path the
load will read (drawn from the option table, so a new path option is in it and guarded by
being declared), the *guard* refuses before any weights are read, and a failed load leaves the
process's CPU threads as they were.

In process, on the tiny real SD pipeline of tests/tiny_models.py and real files: the only
stand-in is a spy that records calls to ``from_pretrained`` and passes them on unchanged.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusers_backend import path_guard
from diffusers_backend.errors import LoadError, PermissionDenied
from diffusers_backend.loading import load_guard, load_plan
from diffusers_backend.loading.options_table import PATH_OPTIONS, Option, Phase
from diffusers_backend.loading.pipeline_loader import find_class, load_pipeline
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings


def _weights(folder: Path, pickle: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    if pickle:
        torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    else:
        save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


def _side_files(models: Path) -> dict[str, str]:
    """One real file or folder for every path option, named after its key."""
    named: dict[str, str] = {}
    for option in PATH_OPTIONS:
        if option.path == "weights":
            _weights(models / option.key)
        else:
            (models / option.key).write_text("{}")
        named[option.key] = option.key
    return named


@pytest.fixture()
def confined(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    path_guard.set_allowed_roots([str(models)])
    yield models
    path_guard.set_allowed_roots([])


@pytest.fixture()
def pretrained_calls(monkeypatch):
    """Every from_pretrained a load reaches (pipelines and models), passed on unchanged."""
    from diffusers import DiffusionPipeline, ModelMixin

    calls: list[str] = []
    for owner in (DiffusionPipeline, ModelMixin):
        real = owner.__dict__["from_pretrained"].__func__

        def spy(cls, *args, _real=real, **kwargs):
            calls.append(cls.__name__)
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(spy))
    return calls


def test_the_plan_is_frozen(tiny_sd):
    plan = load_plan.resolve(LoadSpec(model=str(tiny_sd)), Settings())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.device = "cuda"  # type: ignore[misc]
    assert plan.cls is None  # the class is read after the guard
    assert load_plan.classify(plan).pipeline_class.__name__ == "StableDiffusionPipeline"


def test_paths_names_every_path_option_and_weight_field(tiny_sd, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    options = _side_files(models)
    for name in ("lora", "controlnet", "clip"):
        _weights(models / name)
    spec = LoadSpec(model=str(tiny_sd), model_path=str(models), options=options,
                    lora_adapter="lora", controlnet="controlnet", clip_model="clip")
    plan = load_plan.resolve(spec, Settings())
    found = {item.field: item for item in plan.paths()}
    assert set(found) == {*options, "model", "LoRA", "ControlNet", "CLIP model"}
    for option in PATH_OPTIONS:
        assert found[option.key].path == str(models / option.key)
        assert found[option.key].role == option.path
    load_guard.guard(plan)  # all inside, all safetensors: passes


def test_a_new_path_option_is_in_the_plan_and_guarded(monkeypatch, tiny_sd, confined,
                                                       tmp_path):
    """Declaring an option a path is all it takes: resolve lists it, the guard refuses it."""
    new = Option("new_side_weights", Phase.LOAD, "folder", "a new side folder",
                 path="weights")
    monkeypatch.setattr(load_plan, "PATH_OPTIONS", (*PATH_OPTIONS, new))
    outside = _weights(tmp_path / "outside")
    spec = LoadSpec(model="some/hub-id", model_path=str(confined),
                    options={new.key: str(outside)})
    with pytest.raises(PermissionDenied, match=f"{new.key} .*DIFFUSERS_ALLOWED_PATHS"):
        load_guard.guard(load_plan.resolve(spec, Settings()))
    _weights(confined / "inside", pickle=True)
    spec = LoadSpec(model="some/hub-id", model_path=str(confined),
                    options={new.key: "inside"})
    plan = load_plan.resolve(spec, Settings())
    assert [item.field for item in plan.paths()] == [new.key]
    with pytest.raises(LoadError, match="SAFETENSORS=1 refuses"):
        load_guard.guard(plan)


def test_the_guard_refuses_before_any_weights_are_read(tiny_sd, tmp_path, pretrained_calls):
    _weights(tmp_path / "pickled-lora", pickle=True)
    spec = LoadSpec(model=str(tiny_sd), model_path=str(tmp_path), lora_adapter="pickled-lora")
    with pytest.raises(LoadError, match="SAFETENSORS=1 refuses LoRA"):
        load_pipeline(spec, Settings())
    with pytest.raises(LoadError, match="SAFETENSORS=1 refuses LoRA"):
        find_class(spec, Settings())
    assert pretrained_calls == []
    options = {"trust_remote_code": True}
    with pytest.raises(LoadError, match="DIFFUSERS_ALLOW_REMOTE_CODE"):
        load_pipeline(LoadSpec(model=str(tiny_sd), options=options), Settings())
    assert pretrained_calls == []
    loaded = load_pipeline(LoadSpec(model=str(tiny_sd)), Settings())  # the spy does see loads
    assert "StableDiffusionPipeline" in pretrained_calls
    assert loaded.class_name == "StableDiffusionPipeline"


def _broken_copy(tiny_sd: Path, folder: Path) -> Path:
    """The tiny model with its UNet's weights cut short after their header: it passes the
    guard (a safetensors file by name and header) and fails in the library's load."""
    shutil.copytree(tiny_sd, folder)
    weights = next((folder / "unet").glob("*.safetensors"))
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes(data[:header + 16])
    return folder


def test_a_failed_load_leaves_the_cpu_threads_as_they_were(tiny_sd, tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    broken = _broken_copy(tiny_sd, tmp_path / "broken")
    try:
        with pytest.raises(LoadError, match="could not load .*broken"):
            load_pipeline(LoadSpec(model=str(broken), threads=wanted), Settings())
        assert torch.get_num_threads() == before
        # the weights load, then an adapter fails (a LoRA the offline Hub cannot give)
        with pytest.raises(LoadError, match="could not load LoRA"):
            load_pipeline(LoadSpec(model=str(tiny_sd), threads=wanted,
                                   lora_adapter="nobody/no-such-lora"), Settings())
        assert torch.get_num_threads() == before
        load_pipeline(LoadSpec(model=str(tiny_sd), threads=wanted), Settings())
        assert torch.get_num_threads() == wanted  # a load that succeeds sets them
    finally:
        torch.set_num_threads(before)

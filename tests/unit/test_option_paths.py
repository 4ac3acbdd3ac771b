"""Every path a model YAML can name is guarded, driven by the tables that declare them.

The option table marks each option whose value is a path (``Option.path``) and LoadModel's
fields are listed here by role; the load's *guard* stage (``load_guard.guard``) checks every
path of the plan that *resolve* (``load_plan.resolve``) draws from the table. So a new path
option is either declared (and then guarded, which these tests show for each one) or fails
:func:`test_every_option_that_names_a_path_declares_it`.
In process: the guard runs before anything is loaded, so no server is needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusers_backend import path_guard
from diffusers_backend.errors import LoadError, PermissionDenied
from diffusers_backend.loading import load_guard, load_plan
from diffusers_backend.loading.options_table import OPTIONS, PATH_OPTIONS, PATH_ROLES
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings

# LoadModel fields by what they hold; a new field must be placed in one of these sets.
SPEC_WEIGHT_PATHS = {"lora_adapter": "LoRA", "controlnet": "ControlNet",
                     "clip_model": "CLIP model"}
SPEC_MODEL_PATHS = {"model", "model_file", "model_path"}
SPEC_NOT_PATHS = {"pipeline_type", "scheduler_type", "dtype", "clip_subfolder", "quantization",
                  "lora_base"}  # lora_base: recorded, never read (LocalAI sends it)

_WORDS_OF_A_PATH = ("path", "folder", "file")


def _guard(spec: LoadSpec, safetensors_only: bool = True) -> None:
    """LoadModel's first two stages: resolve the spec into a plan, guard the plan."""
    load_guard.guard(load_plan.resolve(spec, Settings(safetensors_only=safetensors_only)))


def _weights_folder(folder: Path, pickle: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    if pickle:
        torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    else:
        save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture()
def models_only(tmp_path):
    """DIFFUSERS_ALLOWED_PATHS = the models folder; a weights folder lies outside it."""
    models = tmp_path / "models"
    models.mkdir()
    outside = _weights_folder(tmp_path / "outside" / "thing")
    path_guard.set_allowed_roots([str(models)])
    yield models, outside
    path_guard.set_allowed_roots([])


def test_every_option_that_names_a_path_declares_it():
    """An option documented as a path, folder or file must say so in the table, which is
    what puts it under the guard."""
    for option in OPTIONS:
        assert option.path in ("", *PATH_ROLES), option.key
        if any(word in option.value.lower() for word in _WORDS_OF_A_PATH):
            assert option.path, f"option {option.key} names a path but declares no path role"
    assert {opt.key for opt in PATH_OPTIONS} >= {"config", "original_config", "gguf_base",
                                                 "control_annotator"}


def test_every_loadmodel_field_is_placed():
    """A new LoadModel string field must be classified: a path (guarded) or not a path."""
    strings = {f.name for f in dataclasses.fields(LoadSpec) if f.type in ("str", str)}
    assert strings == set(SPEC_WEIGHT_PATHS) | SPEC_MODEL_PATHS | SPEC_NOT_PATHS


@pytest.mark.parametrize("option", PATH_OPTIONS, ids=lambda o: o.key)
def test_each_path_option_is_confined(option, models_only):
    models, outside = models_only
    for named in (str(outside), f"../outside/{outside.name}"):
        spec = LoadSpec(model="some/hub-id", model_path=str(models),
                        options={option.key: named})
        with pytest.raises(PermissionDenied, match="DIFFUSERS_ALLOWED_PATHS"):
            _guard(spec, safetensors_only=True)


@pytest.mark.parametrize("option", [o for o in PATH_OPTIONS if o.path == "weights"],
                         ids=lambda o: o.key)
def test_each_weights_option_refuses_pickle_under_safetensors(option, tmp_path):
    _weights_folder(tmp_path / "pickled", pickle=True)
    spec = LoadSpec(model="some/hub-id", model_path=str(tmp_path),
                    options={option.key: "pickled"})
    with pytest.raises(LoadError, match="SAFETENSORS=1 refuses"):
        _guard(spec, safetensors_only=True)
    _guard(spec, safetensors_only=False)  # SAFETENSORS=0 allows it


@pytest.mark.parametrize("field", sorted(SPEC_WEIGHT_PATHS))
def test_each_loadmodel_weight_field_is_confined(field, models_only):
    models, outside = models_only
    spec = LoadSpec(model="some/hub-id", model_path=str(models), **{field: str(outside)})
    with pytest.raises(PermissionDenied, match="DIFFUSERS_ALLOWED_PATHS"):
        _guard(spec, safetensors_only=True)


def test_lora_adapters_list_is_confined(models_only):
    models, outside = models_only
    spec = LoadSpec(model="some/hub-id", model_path=str(models), lora_adapters=(str(outside),))
    with pytest.raises(PermissionDenied, match="DIFFUSERS_ALLOWED_PATHS"):
        _guard(spec, safetensors_only=True)


def test_a_path_option_inside_the_models_folder_passes(models_only):
    models, _ = models_only
    _weights_folder(models / "annotator")
    spec = LoadSpec(model="some/hub-id", model_path=str(models),
                    options={"control_annotator": "annotator", "gguf_base": "annotator"})
    _guard(spec, safetensors_only=True)

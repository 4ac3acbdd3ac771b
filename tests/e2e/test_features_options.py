"""Options ("key:value"), EngineArgs and EnableParameters end to end on the tiny SD model."""

from __future__ import annotations

import pytest
from features_support import load_ok, log_since, mean_diff, same
from tiny_models import tiny_lora_path

pytestmark = pytest.mark.usefixtures("free_backend_after")


def test_eta_call_option_changes_a_ddim_image(backend, tiny_sd, tmp_path):
    """eta only matters for DDIM; as a call option it reaches every pipeline call."""
    for eta in ("0", "1.0"):
        load_ok(backend, tiny_sd, SchedulerType="ddim", Options=[f"eta:{eta}"])
        backend.image(tmp_path / f"eta{eta}.png", seed=5, step=3)
        backend.image(tmp_path / f"eta{eta}-again.png", seed=5, step=3)
    assert same(tmp_path / "eta0.png", tmp_path / "eta0-again.png")
    assert same(tmp_path / "eta1.0.png", tmp_path / "eta1.0-again.png")
    assert mean_diff(tmp_path / "eta0.png", tmp_path / "eta1.0.png") > 0.2


def test_guidance_rescale_option_changes_the_image(backend, tiny_sd, tmp_path):
    load_ok(backend, tiny_sd)
    backend.image(tmp_path / "plain.png", seed=5)
    load_ok(backend, tiny_sd, Options=["guidance_rescale:0.9"])
    backend.image(tmp_path / "rescaled.png", seed=5)
    assert mean_diff(tmp_path / "plain.png", tmp_path / "rescaled.png") > 0.2


def test_option_the_pipeline_does_not_accept_is_ignored_with_a_warning(backend, tiny_sd,
                                                                        tmp_path):
    """LocalAI's backend lets the pipeline swallow unknown keys; we load, drop the key and
    say so in LoadModel's reply and the log, instead of refusing a YAML that works there."""
    offset = len(backend.log())
    result = load_ok(backend, tiny_sd, Options=["not_a_knob:3"])
    assert "warnings:" in result.message and "'not_a_knob' ignored" in result.message
    assert "not_a_knob" in log_since(backend, offset)
    assert "image written" in backend.image(tmp_path / "ok.png", seed=2).message


def test_value_with_colons_is_split_at_the_first_colon(backend, tiny_sd):
    """The anchor crashed on `foo:a:b` with 'too many values to unpack'; here the key is
    `foo` (unknown to SD, so ignored with a warning naming it)."""
    result = load_ok(backend, tiny_sd, Options=["foo:a:b"])
    assert "'foo' ignored" in result.message and "unpack" not in result.message


def test_json_option_value_with_colons_is_parsed_and_applied(backend, tiny_sd, tmp_path):
    """`cross_attention_kwargs:{"scale": 0.0}` (a JSON value full of colons) turns the LoRA off."""
    load_ok(backend, tiny_sd)
    backend.image(tmp_path / "base.png", seed=9)
    load_ok(backend, tiny_sd, LoraAdapter=str(tiny_lora_path()))
    backend.image(tmp_path / "lora.png", seed=9)
    load_ok(backend, tiny_sd, LoraAdapter=str(tiny_lora_path()),
            Options=['cross_attention_kwargs:{"scale": 0.0}'])
    backend.image(tmp_path / "lora-off.png", seed=9)
    assert mean_diff(tmp_path / "base.png", tmp_path / "lora.png") > 1
    assert same(tmp_path / "base.png", tmp_path / "lora-off.png")


def test_engine_args_reach_from_pretrained(backend, tiny_sd):
    result = backend.load(tiny_sd, EngineArgs='{"variant": "nosuchvariant"}')
    assert not result.success
    assert "nosuchvariant" in result.message
    assert load_ok(backend, tiny_sd, EngineArgs='{"use_safetensors": true}')


def test_engine_args_invalid_json_fails_clearly(backend, tiny_sd):
    result = backend.load(tiny_sd, EngineArgs='{"variant": fp16')
    assert not result.success
    assert "EngineArgs is not valid JSON" in result.message
    result = backend.load(tiny_sd, EngineArgs='["variant"]')
    assert not result.success and "JSON object" in result.message

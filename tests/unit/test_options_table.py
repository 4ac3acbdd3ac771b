"""The option table: every YAML option key the code reads is in it once, load-time checks and
the load/call split come from it, and an ignored option says what was probably meant."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import options_table
from diffusers_backend.loading.options_table import (
    BY_KEY,
    LOAD_TIME_OPTION_KEYS,
    OPTIONS,
    Phase,
    call_options,
    did_you_mean,
    load_options,
    validate_options,
)
from diffusers_backend.loading.spec import LoadSpec

PACKAGE = Path(__file__).resolve().parents[2] / "diffusers_backend"
# How the package reads an option: options.get("k"), options["k"], "k" in spec.options,
# _truthy(opts, "a", "b"), and the ControlNet module's *_KEY constants.
READS = [
    re.compile(r'options(?:\.get\(|\[)\s*"([a-z_0-9]+)"'),
    re.compile(r'"([a-z_0-9]+)" (?:not )?in (?:spec\.|self\.)?(?:load_|call_)?options\b'),
    re.compile(r'_KEY = "([a-z_0-9]+)"'),
]
TRUTHY = re.compile(r"_truthy\(\s*opts,([^)]*)\)", re.S)


def keys_read_by_the_package() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in READS:
            found.update(pattern.findall(text))
        for args in TRUTHY.findall(text):
            found.update(re.findall(r'"([a-z_0-9]+)"', args))
    return found


def test_every_option_the_package_reads_is_in_the_table():
    read = keys_read_by_the_package()
    assert {"torch_dtype", "compile", "gguf_base", "attention_slicing"} <= read  # scan works
    missing = sorted(read - set(BY_KEY))
    assert not missing, f"options read by the code but missing from OPTIONS: {missing}"


def test_each_key_is_written_once():
    keys = [key for opt in OPTIONS for key in opt.keys]
    assert len(keys) == len(set(keys))
    assert LOAD_TIME_OPTION_KEYS == {k for k, o in BY_KEY.items() if o.phase is Phase.LOAD}


def test_load_and_call_options_split_by_the_table():
    options = {"torch_dtype": "fp16", "enable_vae_tiling": True, "eta": 0.5, "cfg_scale": 6}
    assert load_options(options) == {"torch_dtype": "fp16", "enable_vae_tiling": True}
    assert call_options(options) == {"eta": 0.5, "guidance_scale": 6}
    assert call_options({"cfg_scale": 6, "guidance_scale": 4}) == {"guidance_scale": 4}
    spec = LoadSpec(model="m", options=options)
    assert spec.load_options == load_options(options)
    assert spec.call_options == call_options(options)


@pytest.mark.parametrize("options,message", [
    ({"compile_mode": "fastest"}, "unknown compile_mode 'fastest'"),
    ({"compile": "yes"}, "option compile must be true or false"),
    ({"channels_last": 1}, "option channels_last must be true or false"),
])
def test_a_value_the_table_refuses_fails_the_load_with_the_key_named(options, message):
    with pytest.raises(LoadError, match=message):
        validate_options(options)
    with pytest.raises(LoadError, match=message):
        LoadSpec(model="m", options=options).validate()


def test_values_the_table_accepts_pass():
    validate_options({"compile": True, "compile_mode": "max-autotune", "attention_slicing": 1,
                      "not_in_the_table": object()})


@pytest.mark.parametrize("typo,meant", [("guidance_scal", "guidance_scale"),
                                        ("atention_slicing", "attention_slicing"),
                                        ("num_inference_step", "num_inference_steps")])
def test_did_you_mean_finds_table_keys_and_call_arguments(typo, meant):
    assert did_you_mean(typo, {"guidance_scale", "eta", "prompt"}) == meant


def test_no_guess_for_a_key_like_nothing_known():
    assert did_you_mean("not_a_knob", {"guidance_scale", "eta"}) is None


def test_the_ignored_option_warning_names_the_class_and_the_closest_argument():
    """With diffusers' real StableDiffusionPipeline signature (and its variants')."""
    from diffusers import StableDiffusionPipeline

    warning = options_table.ignored_option_warning("guidance_scal", StableDiffusionPipeline)
    assert warning == ("option 'guidance_scal' ignored: StableDiffusionPipeline does not take "
                       "it; did you mean 'guidance_scale'?")
    plain = options_table.ignored_option_warning("not_a_knob", StableDiffusionPipeline)
    assert plain.endswith("does not take it")


def test_a_loaded_model_warns_about_a_mistyped_option_with_the_guess(tiny_sd):
    """LoadModel's path in-process (ModelRuntime.load on the tiny SD): the warning it keeps
    for the reply carries the did-you-mean, and the option is dropped."""
    from diffusers_backend.engine.runtime import ModelRuntime
    from diffusers_backend.settings import Settings

    runtime = ModelRuntime(Settings())
    loaded = runtime.load(LoadSpec(model=str(tiny_sd), options={"guidance_scal": 5.0}))
    try:
        assert ("option 'guidance_scal' ignored: StableDiffusionPipeline does not take it; "
                "did you mean 'guidance_scale'?") in loaded.warnings
        assert "guidance_scal" not in loaded.spec.options
    finally:
        runtime.free()

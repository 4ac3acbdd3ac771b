"""Settings: every environment variable, its documented default, and clear refusals."""

from __future__ import annotations

from dataclasses import fields

import pytest

from diffusers_backend.settings import ENV_VARS, Settings, SettingsError, load_settings


def test_defaults_match_the_seed_variables():
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.compel, settings.xpu, settings.clip_skip_enabled) == (False, False, True)
    # FPS/FRAMES 0: the loaded video family's own rate and length (video_defaults)
    assert (settings.safetensors_only, settings.chunk_size, settings.fps) == (True, 8, 0)
    assert (settings.disable_cpu_offload, settings.frames) == (False, 0)
    assert settings.bfl_repo == "ChuckMcSneed/FLUX.1-dev"
    assert settings.max_workers == 1
    assert settings.parent_watch and settings.parent_watch_interval == 2.0


def test_every_field_is_set_by_exactly_one_variable():
    """The table is the one place a variable is written: each Settings field (but the
    warnings) has one row, and no name is listed twice."""
    names = [var.name for var in ENV_VARS]
    assert len(names) == len(set(names))
    by_field = [var.field for var in ENV_VARS if var.field]
    assert len(by_field) == len(set(by_field))
    assert set(by_field) == {f.name for f in fields(Settings)} - {"warnings"}


def test_each_variable_sets_its_field():
    """A good value given through the environment reaches the field the table names."""
    for var in ENV_VARS:
        if not var.field or var.name in {"LOCALAI_BACKEND_PARENT_WATCH",
                                         "DIFFUSERS_METRICS_ADDR", "DIFFUSERS_LOG_LEVEL",
                                         "DIFFUSERS_LOG_FORMAT", "DIFFUSERS_ALLOWED_PATHS",
                                         "DIFFUSERS_STEP_BATCHING"}:
            continue
        default = getattr(Settings(), var.field)
        if isinstance(default, bool):
            raw = "0" if default else "1"
        elif isinstance(default, int):
            raw = str(default + 1)
        else:
            raw = "x" if isinstance(default, str) else "3"
        value = getattr(load_settings({var.name: raw}), var.field)
        assert value != getattr(Settings(), var.field), var.name
    assert load_settings({"DIFFUSERS_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load_settings({"DIFFUSERS_METRICS_ADDR": "9090"}).metrics_addr == "127.0.0.1:9090"
    assert load_settings({"DIFFUSERS_LOG_FORMAT": "json"}).log_format == "json"
    assert load_settings({"DIFFUSERS_ALLOWED_PATHS": "/a:/b"}).allowed_paths == ("/a", "/b")
    for raw, step_batching in (("1", True), ("0", False), ("auto", None), ("", None)):
        assert load_settings({"DIFFUSERS_STEP_BATCHING": raw}).step_batching is step_batching


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("YES", True),
                                          ("on", True), ("0", False), ("false", False),
                                          ("no", False), ("off", False), ("", False)])
def test_booleans_accept_the_usual_spellings(raw, expected):
    assert load_settings({"COMPEL": raw}).compel is expected


@pytest.mark.parametrize("raw,seconds", [("500ms", 0.5), ("2s", 2.0), ("3", 3.0), ("1m", 60.0)])
def test_parent_watch_interval_durations(raw, seconds):
    assert load_settings({"LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": raw}).parent_watch_interval \
        == seconds


@pytest.mark.parametrize("name,value", [
    ("COMPEL", "maybe"), ("CHUNK_SIZE", "eight"), ("FRAMES", "-1"), ("FPS", "-1"),
    ("PYTHON_GRPC_MAX_WORKERS", "0"),
    ("DIFFUSERS_MAX_PIXELS", "big"), ("DIFFUSERS_LOG_LEVEL", "LOUD"),
    ("DIFFUSERS_SHUTDOWN_GRACE", "-5"),
])
def test_malformed_values_name_the_variable(name, value):
    with pytest.raises(SettingsError) as err:
        load_settings({name: value})
    assert name in str(err.value)
    assert value in str(err.value) or "at least" in str(err.value)


def test_parent_watch_can_be_switched_off():
    for falsey in ("false", "0", "no", "off", " OFF "):
        assert load_settings({"LOCALAI_BACKEND_PARENT_WATCH": falsey}).parent_watch is False


@pytest.mark.parametrize("raw", ["", "1", "true", "maybe", "enabled", "yes please"])
def test_parent_watch_is_on_for_empty_or_unknown_values(raw):
    """As LocalAI's common/parent_watch.py reads it: only a falsey value turns it off, and
    the host's environment never stops the backend from starting."""
    settings = load_settings({"LOCALAI_BACKEND_PARENT_WATCH": raw})
    assert settings.parent_watch is True and not settings.warnings


@pytest.mark.parametrize("raw", ["soon", "-5s", "0", "ms", "2h"])
def test_bad_parent_watch_interval_falls_back_to_2s_with_a_warning(raw):
    settings = load_settings({"LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": raw})
    assert settings.parent_watch_interval == 2.0
    assert len(settings.warnings) == 1
    assert "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL" in settings.warnings[0]
    assert "2s" in settings.warnings[0]


def test_repr_never_shows_the_auth_token():
    settings = load_settings({"LOCALAI_GRPC_AUTH_TOKEN": "s3cret-token"})
    assert settings.auth_token == "s3cret-token"
    assert "s3cret-token" not in repr(settings)

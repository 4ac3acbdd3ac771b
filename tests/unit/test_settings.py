"""Settings: every environment variable, its documented default, and clear refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffusers_backend.settings import Settings, SettingsError, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


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


def test_every_variable_read_is_documented_in_the_readme():
    source = (Path(__file__).resolve().parents[2] / "diffusers_backend/settings.py").read_text()
    names = set(re.findall(r'env(?:\.get\(|, )"([A-Z][A-Z0-9_]{2,})"', source))
    assert len(names) >= 20
    readme = README.read_text()
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"not in the README's table: {missing}"


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

"""Every environment variable the backend reads, parsed once into one frozen object.

Reading the environment in one place means a typo in a value stops start-up with a
message naming the variable, instead of surfacing minutes later inside a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


class SettingsError(ValueError):
    """An environment variable holds a value we cannot use."""


@dataclass(frozen=True)
class Settings:
    """The backend's configuration. Field docs are mirrored in the README table."""

    compel: bool = False  # COMPEL: weight prompts with compel
    xpu: bool = False  # XPU: place models on an Intel XPU
    clip_skip_enabled: bool = True  # CLIPSKIP: honour CLIPSkip values
    safetensors_only: bool = True  # SAFETENSORS: refuse pickle checkpoints
    chunk_size: int = 8  # CHUNK_SIZE: frames decoded at once for video models
    fps: int = 0  # FPS: frames per second of videos; 0 = the loaded family's own rate
    disable_cpu_offload: bool = False  # DISABLE_CPU_OFFLOAD: never offload to CPU
    frames: int = 0  # FRAMES: number of video frames; 0 = the pipeline's own default
    bfl_repo: str = "ChuckMcSneed/FLUX.1-dev"  # BFL_REPO: Flux base repo (quantized loads)
    max_workers: int = 1  # PYTHON_GRPC_MAX_WORKERS: gRPC thread pool size
    max_batch: int = 16  # DIFFUSERS_MAX_BATCH: text-to-image requests sharing one call
    # DIFFUSERS_BATCH_WINDOW_MS: how long a batch waits for requests still being validated;
    # None = adaptive (10 % of the last pipeline call, 2 to 50 ms), 0 = never wait
    batch_window_ms: float | None = None
    output_writers: int = 2  # DIFFUSERS_OUTPUT_WRITERS: threads encoding and writing outputs
    png_compression: int = 1  # DIFFUSERS_PNG_COMPRESSION: zlib level 0-9 of written PNGs
    idle_release_s: float = 2.0  # DIFFUSERS_IDLE_RELEASE_S: give cached GPU memory back
    profile_dir: str = ""  # DIFFUSERS_PROFILE_DIR: torch.profiler traces of pipeline calls
    max_batch_pixels: int = 4 * 1024 * 1024  # DIFFUSERS_MAX_BATCH_PIXELS: pixels per batch
    log_level: str = "INFO"  # DIFFUSERS_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR
    max_queue: int = 32  # DIFFUSERS_MAX_QUEUE: extra threads so queued requests are validated
    auth_token: str = ""  # LOCALAI_GRPC_AUTH_TOKEN: bearer token required when set
    parent_watch: bool = True  # LOCALAI_BACKEND_PARENT_WATCH: exit when orphaned
    parent_watch_interval: float = 2.0  # LOCALAI_BACKEND_PARENT_WATCH_INTERVAL (seconds)
    max_pixels: int = 4096 * 4096  # DIFFUSERS_MAX_PIXELS: largest width*height accepted
    max_steps: int = 500  # DIFFUSERS_MAX_STEPS: largest step count accepted
    max_input_pixels: int = 8192 * 8192  # DIFFUSERS_MAX_INPUT_PIXELS: largest input image
    allow_remote_code: bool = False  # DIFFUSERS_ALLOW_REMOTE_CODE: trust_remote_code etc.
    shutdown_grace: float = 30.0  # DIFFUSERS_SHUTDOWN_GRACE: seconds to finish on SIGTERM
    # Values we could not use but start anyway with a default (logged at start-up).
    warnings: tuple[str, ...] = ()
    metrics_addr: str = ""  # DIFFUSERS_METRICS_ADDR: host:port of /metrics; empty = off
    log_format: str = "text"  # DIFFUSERS_LOG_FORMAT: text or json (one object per line)

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["auth_token"]:
            shown["auth_token"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


DEFAULTS = Settings()  # the one place defaults are written: the fields above


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def parse_duration(name: str, raw: str) -> float:
    """Parse ``500ms``, ``2s``, ``1m`` or a bare number of seconds."""
    text = raw.strip().lower()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0))
    scale = 1.0
    for suffix, factor in units:
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    try:
        value = float(text) * scale
    except ValueError:
        raise SettingsError(f"{name} must be a duration like 500ms, 2s or 3, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _parent_watch(env: Mapping[str, str], warnings: list[str]) -> tuple[bool, float]:
    """LOCALAI_BACKEND_PARENT_WATCH(_INTERVAL), read as LocalAI's own backends read them.

    Only a falsey value (false/0/no/off) switches the watch off; empty or anything else
    leaves it on. A malformed interval falls back to 2 s. Never a reason to refuse to start:
    the host sets these for every backend it runs.
    """
    raw = env.get("LOCALAI_BACKEND_PARENT_WATCH", "").strip().lower()
    enabled = raw not in {"false", "0", "no", "off"}
    interval = 2.0
    interval_raw = env.get("LOCALAI_BACKEND_PARENT_WATCH_INTERVAL", "").strip()
    if interval_raw:
        try:
            interval = parse_duration("LOCALAI_BACKEND_PARENT_WATCH_INTERVAL", interval_raw)
        except SettingsError as exc:
            warnings.append(f"{exc}; using 2s")
    return enabled, interval


def _window_ms(env: Mapping[str, str]) -> float | None:
    """DIFFUSERS_BATCH_WINDOW_MS: milliseconds, or empty/``auto`` for the adaptive window."""
    raw = env.get("DIFFUSERS_BATCH_WINDOW_MS", "").strip().lower()
    if raw in {"", "auto"}:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(
            f"DIFFUSERS_BATCH_WINDOW_MS must be milliseconds or auto, got {raw!r}") from None
    if not 0 <= value <= 10_000:
        raise SettingsError(f"DIFFUSERS_BATCH_WINDOW_MS must be 0 to 10000, got {raw!r}")
    return value


def _png_level(env: Mapping[str, str]) -> int:
    level = _int(env, "DIFFUSERS_PNG_COMPRESSION", 1, minimum=0)
    if level > 9:
        raise SettingsError(f"DIFFUSERS_PNG_COMPRESSION must be 0 to 9, got {level}")
    return level


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration (``500ms``, ``2s``, ``3``), or ``0`` to switch the feature off."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw in {"0", "0s", "0ms", "off"}:
        return 0.0
    return parse_duration(name, raw)


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("DIFFUSERS_LOG_LEVEL", "").strip().upper() or "INFO"
    if raw not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError(
            f"DIFFUSERS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {raw!r}"
        )
    return raw


def parse_metrics_addr(raw: str) -> str:
    """``host:port`` for the metrics endpoint; a bare port means loopback (safe default)."""
    text = raw.strip()
    if not text:
        return ""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535 or any(c in host for c in "/ []"):
        raise SettingsError(
            f"DIFFUSERS_METRICS_ADDR must be PORT or HOST:PORT (e.g. 127.0.0.1:9090), got {raw!r}"
        )
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _log_format(env: Mapping[str, str]) -> str:
    raw = env.get("DIFFUSERS_LOG_FORMAT", "").strip().lower() or "text"
    if raw not in {"text", "json"}:
        raise SettingsError(f"DIFFUSERS_LOG_FORMAT must be text or json, got {raw!r}")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``); raise on bad values."""
    env = os.environ if env is None else env
    d = DEFAULTS
    warnings: list[str] = []
    parent_watch, parent_watch_interval = _parent_watch(env, warnings)
    grace_raw = env.get("DIFFUSERS_SHUTDOWN_GRACE", "").strip()
    return Settings(
        compel=_bool(env, "COMPEL", d.compel),
        xpu=_bool(env, "XPU", d.xpu),
        clip_skip_enabled=_bool(env, "CLIPSKIP", d.clip_skip_enabled),
        safetensors_only=_bool(env, "SAFETENSORS", d.safetensors_only),
        chunk_size=_int(env, "CHUNK_SIZE", d.chunk_size, minimum=1),
        fps=_int(env, "FPS", d.fps, minimum=0),
        disable_cpu_offload=_bool(env, "DISABLE_CPU_OFFLOAD", d.disable_cpu_offload),
        frames=_int(env, "FRAMES", d.frames, minimum=0),
        bfl_repo=env.get("BFL_REPO", "").strip() or d.bfl_repo,
        max_workers=_int(env, "PYTHON_GRPC_MAX_WORKERS", d.max_workers, minimum=1),
        max_queue=_int(env, "DIFFUSERS_MAX_QUEUE", d.max_queue, minimum=0),
        log_level=_log_level(env),
        max_batch=_int(env, "DIFFUSERS_MAX_BATCH", d.max_batch, minimum=1),
        batch_window_ms=_window_ms(env),
        output_writers=_int(env, "DIFFUSERS_OUTPUT_WRITERS", d.output_writers, minimum=1),
        png_compression=_png_level(env),
        idle_release_s=_seconds(env, "DIFFUSERS_IDLE_RELEASE_S", d.idle_release_s),
        profile_dir=env.get("DIFFUSERS_PROFILE_DIR", "").strip(),
        max_batch_pixels=_int(env, "DIFFUSERS_MAX_BATCH_PIXELS", d.max_batch_pixels, minimum=64),
        auth_token=env.get("LOCALAI_GRPC_AUTH_TOKEN", "").strip(),
        parent_watch=parent_watch,
        parent_watch_interval=parent_watch_interval,
        max_pixels=_int(env, "DIFFUSERS_MAX_PIXELS", d.max_pixels, minimum=64),
        max_steps=_int(env, "DIFFUSERS_MAX_STEPS", d.max_steps, minimum=1),
        max_input_pixels=_int(env, "DIFFUSERS_MAX_INPUT_PIXELS", d.max_input_pixels, minimum=64),
        allow_remote_code=_bool(env, "DIFFUSERS_ALLOW_REMOTE_CODE", d.allow_remote_code),
        shutdown_grace=(
            parse_duration("DIFFUSERS_SHUTDOWN_GRACE", grace_raw) if grace_raw
            else d.shutdown_grace
        ),
        warnings=tuple(warnings),
        metrics_addr=parse_metrics_addr(env.get("DIFFUSERS_METRICS_ADDR", "")),
        log_format=_log_format(env),
    )

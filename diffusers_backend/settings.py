"""Every environment variable the backend reads, parsed once into one frozen object.

Reading the environment in one place means a typo in a value stops start-up with a
message naming the variable, instead of surfacing minutes later inside a request.
Each variable is written once, in :data:`ENV_VARS` (name, field, parser, doc); its default
is the :class:`Settings` field's. The env table of docs/configuration.md is generated from
them, and a unit test fails when the page and the code disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


class SettingsError(ValueError):
    """An environment variable holds a value we cannot use."""


@dataclass(frozen=True)
class Settings:
    """The backend's configuration; :data:`ENV_VARS` says which variable sets each field."""

    compel: bool = False
    sd_embed: bool = False
    xpu: bool = False
    clip_skip_enabled: bool = True
    safetensors_only: bool = True
    chunk_size: int = 8
    fps: int = 0
    disable_cpu_offload: bool = False
    frames: int = 0
    bfl_repo: str = "ChuckMcSneed/FLUX.1-dev"
    max_workers: int = 1
    max_batch: int = 16
    # requests join and leave a running denoising loop; None ("auto"): on a GPU/XPU/MPS only,
    # since on a CPU a batched step costs the sum of its members (docs/engine.md)
    step_batching: bool | None = None
    batch_window_ms: float | None = None  # None = adaptive
    output_writers: int = 2
    png_compression: int = 1
    idle_release_s: float = 2.0
    profile_dir: str = ""
    max_batch_pixels: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    max_queue: int = 32
    auth_token: str = ""
    parent_watch: bool = True
    parent_watch_interval: float = 2.0
    max_pixels: int = 4096 * 4096
    max_steps: int = 500
    max_input_pixels: int = 8192 * 8192
    allow_remote_code: bool = False
    shutdown_grace: float = 30.0
    # Values we could not use but start anyway with a default (logged at start-up).
    warnings: tuple[str, ...] = ()
    metrics_addr: str = ""
    log_format: str = "text"
    # DIFFUSERS_ALLOWED_PATHS etc.: limits on what requests may name and send (docs/security.md)
    allowed_paths: tuple[str, ...] = ()  # empty = anywhere
    max_prompt_chars: int = 100_000
    max_request_bytes: int = 4 * 1024 * 1024
    max_inpaint_json_bytes: int = 32 * 1024 * 1024
    # cost-aware admission (engine/admission.py, docs/security.md)
    max_side_factor: int = 8
    device_memory: int = 0  # 0 = what the device reports
    warmup: bool = True
    deadline_admission: bool = True

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["auth_token"]:
            shown["auth_token"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


DEFAULTS = Settings()  # the one place defaults are written: the fields above

# ------------------------------------------------------------------------------ parsers
Parser = Callable[[str, str], Any]  # (variable name, raw value) -> value, or SettingsError


def parse_bool_or_auto(name: str, raw: str) -> bool | None:
    """A boolean, or ``auto`` (None): the backend decides per device."""
    if raw.strip().lower() == "auto":
        return None
    return parse_bool(name, raw)


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def int_parser(minimum: int = 0, maximum: int | None = None) -> Parser:
    """An integer of at least ``minimum`` (and at most ``maximum``)."""

    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name} must be {minimum} to {maximum}, got {value}")
        return value

    return parse


def parse_text(_name: str, raw: str) -> str:
    return raw.strip()


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


def parse_seconds_or_off(name: str, raw: str) -> float:
    """A duration (``500ms``, ``2s``, ``3``), or ``0`` to switch the feature off."""
    if raw.strip() in {"0", "0s", "0ms", "off"}:
        return 0.0
    return parse_duration(name, raw)


def parse_parent_watch(_name: str, raw: str) -> bool:
    """As LocalAI's own backends read it: only a falsey value (false/0/no/off) switches the
    watch off; empty or anything else leaves it on (never a reason to refuse to start)."""
    return raw.strip().lower() not in {"false", "0", "no", "off"}


def parse_window_ms(name: str, raw: str) -> float | None:
    """Milliseconds, or ``auto`` for the adaptive window."""
    text = raw.strip().lower()
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name} must be milliseconds or auto, got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise SettingsError(f"{name} must be 0 to 10000, got {text!r}")
    return value


def parse_log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError(f"{name} must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return value


def parse_log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"text", "json"}:
        raise SettingsError(f"{name} must be text or json, got {value!r}")
    return value


def parse_allowed_paths(name: str, raw: str) -> tuple[str, ...]:
    """Absolute folders joined by ``:`` (a folder that does not exist yet is kept)."""
    roots = tuple(part.strip() for part in raw.split(":") if part.strip())
    for root in roots:
        if not os.path.isabs(os.path.expanduser(root)):
            raise SettingsError(f"{name} must hold absolute folders joined by ':', got {root!r}")
    return roots


def parse_metrics_addr(raw: str, name: str = "DIFFUSERS_METRICS_ADDR") -> str:
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
            f"{name} must be PORT or HOST:PORT (e.g. 127.0.0.1:9090), got {raw!r}"
        )
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


# ------------------------------------------------------------------------ the variables


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: the field it sets, how it is read, what it means."""

    name: str
    field: str  # the Settings field; "" for a variable read where it is used
    parse: Parser | None
    doc: str
    default: str = ""  # the default as the docs show it; derived from the field when empty
    empty_is_default: bool = True  # an empty value means the default (not for booleans)
    lenient: bool = False  # a bad value starts with the default and a warning

    def shown_default(self) -> str:
        if self.default or not self.field:
            return self.default
        value = getattr(DEFAULTS, self.field)
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value) if value != "" else "empty"


_B = parse_bool
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("COMPEL", "compel", _B, "weight prompts with [compel](https://github.com/damian0815/"
           "compel) (`a (red)++ cube`), SD 1.x/2.x and SDXL; SD3 and Flux with the A1111 "
           "syntax (`a (red:1.3) cube`)", empty_is_default=False),
    EnvVar("SD_EMBED", "sd_embed", _B, "weight prompts with A1111's `(word:1.2)` syntax",
           empty_is_default=False),
    EnvVar("XPU", "xpu", _B, "run on an Intel XPU", empty_is_default=False),
    EnvVar("CLIPSKIP", "clip_skip_enabled", _B, "honour `CLIPSkip` (model YAML `clip_skip` "
           "and per request)", empty_is_default=False),
    EnvVar("SAFETENSORS", "safetensors_only", _B, "refuse pickle checkpoints (`.ckpt`, "
           "`.bin`, `.pt`, `.pth`), which can run code when loaded", empty_is_default=False),
    EnvVar("CHUNK_SIZE", "chunk_size", int_parser(1), "video frames decoded at once "
           "(`decode_chunk_size`)"),
    EnvVar("FPS", "fps", int_parser(0), "frames per second of videos when the request gives "
           "none; 0 = the loaded family's own rate (Wan 16, LTX 24, SVD 7...)"),
    EnvVar("DISABLE_CPU_OFFLOAD", "disable_cpu_offload", _B, "never offload to CPU, even "
           "with `low_vram` or offload options", empty_is_default=False),
    EnvVar("FRAMES", "frames", int_parser(0), "video frames when the request gives none; "
           "0 = the pipeline's own default"),
    EnvVar("BFL_REPO", "bfl_repo", parse_text, "base repository for quantized Flux loads "
           "(text encoders, VAE)"),
    EnvVar("PYTHON_GRPC_MAX_WORKERS", "max_workers", int_parser(1), "generation requests "
           "served at once (calls on one pipeline still run one at a time; Health/Status "
           "have their own threads)"),
    EnvVar("DIFFUSERS_MAX_BATCH", "max_batch", int_parser(1), "queued text-to-image requests "
           "that differ only in prompt, negative prompt and seed share one pipeline call "
           "(`1` turns batching off)"),
    EnvVar("DIFFUSERS_STEP_BATCHING", "step_batching", parse_bool_or_auto, "text-to-image "
           "requests join and leave a running denoising loop between steps (SD 1.x/2.x, SDXL, "
           "SD3; docs/engine.md); `auto` (the same as `1`): on wherever such a loop serves the "
           "model (measured on a CPU, it cuts p50 and p99 latency at equal throughput; no GPU "
           "row has been run yet), `0`: request-level batches only",
           default="auto"),
    EnvVar("DIFFUSERS_BATCH_WINDOW_MS", "batch_window_ms", parse_window_ms, "how long a "
           "request about to run waits for requests that are still being validated, so "
           "simultaneous clients share one batch; `auto` = 10 % of the last pipeline call "
           "(2 to 50 ms) while other requests are being validated, else at most 1 % of it; "
           "`0` = never", default="auto"),
    EnvVar("DIFFUSERS_OUTPUT_WRITERS", "output_writers", int_parser(1), "threads that encode "
           "and write outputs while the pipeline thread runs the next batch"),
    EnvVar("DIFFUSERS_PNG_COMPRESSION", "png_compression", int_parser(0, 9), "zlib level "
           "(0-9) of written PNGs: 1 encodes several times faster than 6 for slightly larger "
           "files"),
    EnvVar("DIFFUSERS_PROFILE_DIR", "profile_dir", parse_text, "write a torch.profiler trace "
           "(`call-N.json`, Chrome/Perfetto) and a top-operators table (`call-N.txt`) of every "
           "pipeline call there; slows calls down, for finding where time goes",
           default="empty (off)"),
    EnvVar("DIFFUSERS_IDLE_RELEASE_S", "idle_release_s", parse_seconds_or_off, "after this "
           "long idle, cached GPU memory is handed back to the driver (`0` = keep it)",
           default="2s"),
    EnvVar("DIFFUSERS_MAX_BATCH_PIXELS", "max_batch_pixels", int_parser(64), "total output "
           "pixels of one batch (16 x 512x512, 4 x 1024x1024); a batch that still runs out of "
           "memory is retried one by one"),
    EnvVar("DIFFUSERS_MAX_QUEUE", "max_queue", int_parser(0), "extra threads for requests "
           "waiting their turn, so a bad one is refused at once instead of waiting"),
    EnvVar("LOCALAI_GRPC_AUTH_TOKEN", "auth_token", parse_text, "when set, every call needs "
           "metadata `authorization: Bearer <token>`"),
    EnvVar("LOCALAI_BACKEND_PARENT_WATCH", "parent_watch", parse_parent_watch, "exit when the "
           "host process that started us is gone; only `false/0/no/off` turn it off (empty or "
           "unknown = on, as LocalAI reads it)", default="on"),
    EnvVar("LOCALAI_BACKEND_PARENT_WATCH_INTERVAL", "parent_watch_interval", parse_duration,
           "how often to check (`500ms`, `2s`, or seconds); a malformed value means 2 s, with "
           "a warning", default="2s", lenient=True),
    EnvVar("DIFFUSERS_MAX_PIXELS", "max_pixels", int_parser(64), "largest output width x "
           "height (4096x4096), also for upscaling"),
    EnvVar("DIFFUSERS_MAX_INPUT_PIXELS", "max_input_pixels", int_parser(64), "largest input "
           "image accepted (decompression-bomb guard)"),
    EnvVar("DIFFUSERS_MAX_STEPS", "max_steps", int_parser(1), "largest step count accepted"),
    EnvVar("DIFFUSERS_ALLOW_REMOTE_CODE", "allow_remote_code", _B, "allow `trust_remote_code` "
           "/ `custom_pipeline` from options or `EngineArgs`", empty_is_default=False),
    EnvVar("DIFFUSERS_SHUTDOWN_GRACE", "shutdown_grace", parse_duration, "on SIGTERM, how "
           "long running requests may finish", default="30s"),
    EnvVar("DIFFUSERS_LOG_LEVEL", "log_level", parse_log_level, "log level of the server "
           "(logs go to stderr)"),
    EnvVar("DIFFUSERS_LOG_FORMAT", "log_format", parse_log_format, "`json`: every log line is "
           "one JSON object (time, level, logger, message, request fields)"),
    EnvVar("DIFFUSERS_METRICS_ADDR", "metrics_addr", lambda name, raw: parse_metrics_addr(
        raw, name), "serve Prometheus metrics at `http://HOST:PORT/metrics`; a bare port means "
           "`127.0.0.1:PORT`; needs the bearer token when `LOCALAI_GRPC_AUTH_TOKEN` is set",
           default="empty (off)"),
    EnvVar("DIFFUSERS_ALLOWED_PATHS", "allowed_paths", parse_allowed_paths, "folders "
           "(absolute, joined by `:`) every file a request or model names must resolve under, "
           "links followed; others are PERMISSION_DENIED (docs/security.md); recommended for "
           "any non-loopback bind", default="empty (anywhere)"),
    EnvVar("DIFFUSERS_MAX_PROMPT_CHARS", "max_prompt_chars", int_parser(1), "longest prompt "
           "or negative prompt accepted, in characters"),
    EnvVar("DIFFUSERS_MAX_REQUEST_BYTES", "max_request_bytes", int_parser(64 * 1024),
           "largest gRPC request accepted (the host sends paths and prompts, not data)"),
    EnvVar("DIFFUSERS_MAX_INPAINT_JSON_BYTES", "max_inpaint_json_bytes", int_parser(1024),
           "largest inpainting JSON file read (the host sends image and mask as files too)"),
    EnvVar("DIFFUSERS_MAX_SIDE_FACTOR", "max_side_factor", int_parser(0), "longest output "
           "side accepted, as a multiple of the model's native side (SD 1.x 512, SDXL/SD3/Flux "
           "1024; `8`: 4096 for SD 1.x), so absurd aspect ratios are refused; `0` = no limit"),
    EnvVar("DIFFUSERS_DEVICE_MEMORY", "device_memory", int_parser(0), "bytes a request may "
           "use; a request whose memory estimate is larger is RESOURCE_EXHAUSTED before it "
           "queues (docs/security.md); `0` = the free memory the GPU (or host) reports"),
    EnvVar("DIFFUSERS_DEADLINE_ADMISSION", "deadline_admission", _B, "refuse at once "
           "(DEADLINE_EXCEEDED) a request whose time estimate is past its client's deadline; "
           "`0`: queue it anyway and cancel it inside a step when the deadline passes",
           empty_is_default=False),
    EnvVar("DIFFUSERS_WARMUP", "warmup", _B, "after each LoadModel, run one small denoising "
           "step, so admission's time estimate has a measurement before the first request",
           empty_is_default=False),
    # Read where they are used (no Settings field), documented here with the rest.
    EnvVar("DIFFUSERS_LOADER_CACHE_DIR", "", None, "where the pipeline registry cache lives",
           default="`$XDG_CACHE_HOME/localai-diffusers`, else `~/.cache/localai-diffusers`"),
    EnvVar("DIFFUSERS_COMPILE_CACHE_DIR", "", None, "where `compile` / `compile_regional` "
           "keep compiled kernels, so the next start of the same model skips most of the "
           "compile (an explicit `TORCHINDUCTOR_CACHE_DIR` wins; docs/acceleration.md)",
           default="`torch-compile` in the folder above"),
    EnvVar("HF_HUB_OFFLINE", "", None, "standard Hugging Face variable: never contact the Hub",
           default="unset"),
)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``); raise on bad values."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for var in ENV_VARS:
        raw = env.get(var.name)
        if var.parse is None or raw is None or (var.empty_is_default and not raw.strip()):
            continue
        try:
            values[var.field] = var.parse(var.name, raw)
        except SettingsError as exc:
            if not var.lenient:
                raise
            warnings.append(f"{exc}; using {var.shown_default()}")
    return Settings(**values, warnings=tuple(warnings))


def markdown_table() -> str:
    """The env table of docs/configuration.md, generated from :data:`ENV_VARS`."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var in ENV_VARS:
        default = var.shown_default()
        shown = default if default.startswith("`") or " " in default or default in {
            "on", "unset", "empty"} else f"`{default}`"
        rows.append(f"| `{var.name}` | {shown} | {var.doc} |")
    return "\n".join(rows) + "\n"

"""What LoadModel asked for, parsed and validated into plain Python values.

The servicer turns the protobuf ``ModelOptions`` into a :class:`LoadSpec`; everything after
that (resolution, loading, runtime) works on this object and never sees protobuf.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import options_table
from diffusers_backend.loading.control_options import check_control_options

DTYPE_NAMES = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "f32": "float32",
}


def parse_option_value(raw: str) -> Any:
    """Type an option value: bool, int, float, JSON, else the string itself."""
    text = raw.strip()
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text[:1] in "[{\"":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_options(options: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Parse ``key:value`` strings, splitting at the first colon only (values may hold colons).

    An entry without a colon is skipped with a warning, as LocalAI's own backend skips it:
    a YAML that loads there must load here. Returns the options and the warnings.
    """
    parsed: dict[str, Any] = {}
    warnings: list[str] = []
    for entry in options:
        if not entry.strip():
            continue
        key, sep, value = entry.partition(":")
        key = key.strip()
        if not sep or not key:
            warnings.append(f"option {entry!r} ignored: not of the form key:value")
            continue
        parsed[key] = parse_option_value(value)
    return parsed, warnings


def parse_dtype_name(value: str) -> str | None:
    """Map a user dtype spelling (fp16, bf16, fp32...) to a torch dtype attribute name;
    None for a word we do not know (``auto``...)."""
    return DTYPE_NAMES.get(str(value).strip().lower())


def parse_engine_args(raw: str) -> dict[str, Any]:
    """``EngineArgs`` is a JSON object of extra from_pretrained keyword arguments."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoadError(f"EngineArgs is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise LoadError("EngineArgs must be a JSON object like {\"variant\": \"fp16\"}")
    return value


@dataclass(frozen=True)
class LoadSpec:
    """A LoadModel request in plain values; see the README for each field's meaning."""

    model: str
    model_file: str = ""
    model_path: str = ""
    pipeline_type: str = ""
    scheduler_type: str = ""
    cuda: bool = False
    f16: bool = False
    dtype: str = ""
    low_vram: bool = False
    img2img: bool = False
    cfg_scale: float = 0.0
    clip_skip: int = 0
    clip_model: str = ""
    clip_subfolder: str = ""
    controlnet: str = ""
    lora_adapter: str = ""
    lora_base: str = ""
    lora_scale: float = 0.0
    lora_adapters: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()
    quantization: str = ""
    tensor_parallel_size: int = 0
    threads: int = 0
    seed: int = 0  # recorded only: each request draws its own seed (tasks/calls.py)
    options: dict[str, Any] = field(default_factory=dict)
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Problems found while parsing that LocalAI's backend tolerates: served with a warning.
    warnings: tuple[str, ...] = ()

    @property
    def load_options(self) -> dict[str, Any]:
        """Options consumed while loading (see :mod:`options_table`)."""
        return options_table.load_options(self.options)

    @property
    def call_options(self) -> dict[str, Any]:
        """Options passed as default keyword arguments of every pipeline call.

        ``cfg_scale`` (LocalAI's docs show ``options: ["cfg_scale:6"]``) is the guidance
        scale; an explicit ``guidance_scale`` option wins over it.
        """
        return options_table.call_options(self.options)

    def _dtype_words(self) -> list[tuple[str, str]]:
        """The dtype words given, most specific first: (field, word)."""
        words = []
        if "torch_dtype" in self.options:
            words.append(("torch_dtype", str(self.options["torch_dtype"])))
        if self.dtype.strip():
            words.append(("dtype", self.dtype))
        return words

    @property
    def explicit_dtype(self) -> bool:
        """Whether the YAML chose a dtype we know (``torch_dtype`` option or ``DType``)."""
        return any(parse_dtype_name(word) for _, word in self._dtype_words())

    def torch_dtype_name(self) -> str:
        """The compute dtype: option ``torch_dtype``, then ``DType``, then F16Memory.

        A word we do not know (``torch_dtype:auto``) is ignored, as LocalAI's backend ignores
        it; :meth:`dtype_warnings` says so.
        """
        for _, word in self._dtype_words():
            name = parse_dtype_name(word)
            if name:
                return name
        return "float16" if self.f16 else "float32"

    def dtype_warnings(self, used: str) -> list[str]:
        """One warning per unknown dtype word, naming ``used``, the dtype loaded instead."""
        return [f"{field} {word!r} is not a dtype this backend knows (fp16, bf16, fp32...); "
                f"ignored, loaded in {used}" for field, word in self._dtype_words()
                if not parse_dtype_name(word)]

    def validate(self) -> None:
        """Fail early, with the field named, on values that would only fail later."""
        if not (self.model.strip() or self.model_file.strip()):
            raise LoadError("no model given: set `parameters.model` in the model YAML")
        if self.lora_scales and len(self.lora_scales) != len(self.lora_adapters):
            raise LoadError(
                f"lora_scales has {len(self.lora_scales)} values but lora_adapters has "
                f"{len(self.lora_adapters)}; give one scale per adapter or none"
            )
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise LoadError(f"cfg_scale must be a finite number, 0 or more, got {self.cfg_scale}")
        options_table.validate_options(self.options)
        check_control_options(self.options, self.model_path)

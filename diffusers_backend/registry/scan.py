"""The registry's records, read from diffusers' lazy import table and pipeline sources
without importing a pipeline module: per class its module, whether it is deprecated, takes a
prompt, loads single files, is an AutoPipeline; and diffusers' AutoPipeline task tables.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

from diffusers_backend.registry.names import AUTO_PREFIX, slug

logger = logging.getLogger("diffusers_dynamic_loader")

_CLASS_RE = re.compile(r"^class[ \t]+(\w+)[ \t]*(?:\(([^)]*)\))?[ \t]*:", re.M)
_CALL_RE = re.compile(r"\n[ \t]+def __call__\(")
_PROMPT_RE = re.compile(r"\bprompt\b\s*[:=,)]")
_MAPPING_RE = re.compile(
    r"^(AUTO_(\w+?)_PIPELINES_MAPPING)\s*=\s*OrderedDict\(\s*\[(.*?)\]\s*\)", re.M | re.S
)
_MAPPING_ITEM_RE = re.compile(r"\(\s*[\"']([^\"']+)[\"']\s*,\s*(\w+)\s*\)")
_MAPPING_SET_RE = re.compile(
    r"^\s*AUTO_(\w+?)_PIPELINES_MAPPING\[[\"']([^\"']+)[\"']\]\s*=\s*(\w+)", re.M
)


def _scan_sources(pipelines_dir: Path) -> dict[str, dict[str, Any]]:
    """Class name -> {module, bases, prompt} from the pipelines sources, without importing.

    A regex over class headers is ~30x faster than ``ast`` here and is all that is needed;
    the test suite checks the result against a real import-and-scan.
    """
    classes: dict[str, dict[str, Any]] = {}
    for path in sorted(pipelines_dir.rglob("*.py")):
        try:
            src = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        rel = path.relative_to(pipelines_dir).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join(["diffusers", "pipelines", *parts])
        headers = list(_CLASS_RE.finditer(src))
        for i, match in enumerate(headers):
            bases_src = re.sub(r"#[^\n]*", "", match.group(2) or "")
            bases = []
            for base in bases_src.split(","):
                base = base.strip()
                if base and "=" not in base:
                    bases.append(re.split(r"[\[\s]", base)[0].rsplit(".", 1)[-1])
            end = headers[i + 1].start() if i + 1 < len(headers) else len(src)
            body = src[match.end() : end]
            call = _CALL_RE.search(body)
            prompt = None
            if call:
                header = body[call.end() : call.end() + 4000]
                close = re.search(r"\n[ \t]*\)[^\n]*:[ \t]*\n", header)
                prompt = bool(_PROMPT_RE.search(header[: close.start() if close else None]))
            entry = classes.setdefault(
                match.group(1), {"modules": [], "bases": [], "prompt": prompt}
            )
            entry["modules"].append(module)
            entry["bases"].extend(b for b in bases if b not in entry["bases"])
            if entry["prompt"] is None:
                entry["prompt"] = prompt
    return classes


def _auto_mappings(pipelines_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """diffusers' AutoPipeline task mappings, read as data: task -> [(family key, class)]."""
    try:
        src = (pipelines_dir / "auto_pipeline.py").read_text(encoding="utf-8")
    except OSError:
        return {}
    out: dict[str, list[tuple[str, str]]] = {}
    for match in _MAPPING_RE.finditer(src):
        task = _mapping_task(match.group(2))
        out.setdefault(task, []).extend(_MAPPING_ITEM_RE.findall(match.group(3)))
    for kind, key, cls in _MAPPING_SET_RE.findall(src):
        out.setdefault(_mapping_task(kind), []).append((key, cls))
    return out


def _mapping_task(kind: str) -> str:
    """``TEXT2IMAGE`` -> ``text-to-image``; ``INPAINT`` -> ``inpainting``."""
    if "2" in kind:
        src, dst = kind.lower().split("2", 1)
        return f"{src}-to-{dst}"
    return "inpainting" if kind.upper() == "INPAINT" else slug(kind)


def _ancestors(sources: dict[str, dict[str, Any]], name: str,
               seen: set[str] | None = None) -> set[str]:
    """Every base class of ``name`` found in the scanned sources."""
    seen = set() if seen is None else seen
    for base in sources.get(name, {}).get("bases", []):
        if base not in seen:
            seen.add(base)
            _ancestors(sources, base, seen)
    return seen


def _takes_prompt(sources: dict[str, dict[str, Any]], name: str,
                  seen: set[str] | None = None) -> bool | None:
    """Whether ``name``'s ``__call__`` (its own or the nearest base's) takes a prompt."""
    seen = set() if seen is None else seen
    entry = sources.get(name)
    if entry is None or name in seen:
        return None
    seen.add(name)
    if entry["prompt"] is not None:
        return bool(entry["prompt"])
    for base in entry["bases"]:
        found = _takes_prompt(sources, base, seen)
        if found is not None:
            return found
    return None


def build_records() -> dict[str, Any]:
    """Build the registry data (imports diffusers' lazy top level, no pipeline module)."""
    import diffusers

    top = getattr(diffusers, "_class_to_module", None)
    pipelines_mod = sys.modules.get("diffusers.pipelines")
    if pipelines_mod is None:
        pipelines_mod = importlib.import_module("diffusers.pipelines")
    sub = getattr(pipelines_mod, "_class_to_module", None)
    if not isinstance(top, dict) or not isinstance(sub, dict):
        logger.warning("diffusers has no lazy import structure; falling back to a full scan")
        return _build_records_by_import()

    pipelines_dir = Path(str(pipelines_mod.__file__)).parent
    sources = _scan_sources(pipelines_dir)

    pipelines: dict[str, dict[str, Any]] = {}
    for name, where in top.items():
        if where != "pipelines":
            continue  # dummies for missing optional deps live under utils.dummy_*
        subpkg = sub.get(name, "")
        is_auto = subpkg == "auto_pipeline" and name.startswith(AUTO_PREFIX)
        entry = sources.get(name)
        if entry is not None:
            anc = _ancestors(sources, name)
            is_pipe = name == "DiffusionPipeline" or "DiffusionPipeline" in anc
            single = "FromSingleFileMixin" in anc
            modules = entry["modules"]
            module = next(
                (m for m in modules if m.startswith(f"diffusers.pipelines.{subpkg}")), modules[0]
            )
        else:  # definition not found in the sources: trust the naming convention
            anc = set()
            is_pipe = "Pipeline" in name and not name.endswith(("Output", "Mixin"))
            single = None
            module = f"diffusers.pipelines.{subpkg}" if subpkg else "diffusers.pipelines"
        if not (is_pipe or is_auto):
            continue
        pipelines[name] = {
            "module": module,
            "deprecated": subpkg == "deprecated" or "DeprecatedPipelineMixin" in anc,
            "single_file": single,
            "auto": is_auto,
            "prompt": _takes_prompt(sources, name),
        }
    auto = {
        task: [[key, cls] for key, cls in items if cls in pipelines]
        for task, items in _auto_mappings(pipelines_dir).items()
    }
    return {"pipelines": pipelines, "auto": auto}


def _build_records_by_import() -> dict[str, Any]:
    """Slow fallback: import every top-level name (only if the lazy structure is gone)."""
    import diffusers
    from diffusers import DiffusionPipeline

    pipelines: dict[str, dict[str, Any]] = {}
    for name in dir(diffusers):
        try:
            obj = getattr(diffusers, name)
        except Exception:
            continue
        if not isinstance(obj, type):
            continue
        is_auto = name.startswith(AUTO_PREFIX)
        if not (is_auto or issubclass(obj, DiffusionPipeline)):
            continue
        module = getattr(obj, "__module__", "")
        pipelines[name] = {
            "module": module,
            "deprecated": ".deprecated." in module,
            "single_file": callable(getattr(obj, "from_single_file", None)),
            "auto": is_auto,
            "prompt": None,
        }
    return {"pipelines": pipelines, "auto": {}}

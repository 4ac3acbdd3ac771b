"""The pipeline registry: names read from diffusers' lazy import table and sources (never
importing a pipeline module), kept in a JSON cache keyed by diffusers' version and location,
and handed out as a read-only, lazily importing mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from diffusers_backend.registry.names import _AUTO_PREFIX, _slug

logger = logging.getLogger("diffusers_dynamic_loader")

_CACHE_SCHEMA = 1

# --------------------------------------------------------------------------------------
# Cache location and stamp (computed without importing diffusers)
# --------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    env = os.environ.get("DIFFUSERS_LOADER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "localai-diffusers"


def _diffusers_stamp() -> dict[str, Any] | None:
    """Identify the installed diffusers without importing it (version, place, mtimes)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("diffusers")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    init = Path(spec.origin)
    try:
        from importlib.metadata import version

        ver = version("diffusers")
    except Exception:  # metadata missing (e.g. a source checkout on sys.path)
        ver = "unknown"
    site = init.parent.parent
    try:
        init_mtime = init.stat().st_mtime_ns
        # The site dir changes when packages are (un)installed there; optional
        # dependencies decide which pipelines are real and which are dummies.
        site_mtime = site.stat().st_mtime_ns
    except OSError:
        init_mtime = site_mtime = 0
    return {
        "schema": _CACHE_SCHEMA,
        "diffusers_version": ver,
        "diffusers_location": str(init.parent),
        "init_mtime_ns": init_mtime,
        "site_mtime_ns": site_mtime,
    }


def _cache_file(stamp: dict[str, Any]) -> Path:
    digest = hashlib.sha1(stamp["diffusers_location"].encode()).hexdigest()[:12]
    return _cache_dir() / f"pipeline-registry-{digest}.json"


def _read_cache(stamp: dict[str, Any]) -> dict[str, Any] | None:
    path = _cache_file(stamp)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable diffusers registry cache %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("stamp") != stamp:
        logger.info("Diffusers registry cache %s is stale; rebuilding", path)
        return None
    if not isinstance(data.get("pipelines"), dict) or not isinstance(data.get("auto"), dict):
        logger.warning("Ignoring malformed diffusers registry cache %s", path)
        return None
    return data


def _write_cache(data: dict[str, Any]) -> None:
    """Atomic write (tmp file + rename); any failure only logs a warning."""
    path = _cache_file(data["stamp"])
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"), sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("Cannot write diffusers registry cache %s: %s", path, exc)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# Building the registry from diffusers' lazy import structure + source text
# --------------------------------------------------------------------------------------

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
    return "inpainting" if kind.upper() == "INPAINT" else _slug(kind)


def _ancestors(sources: dict[str, dict[str, Any]], name: str,
               seen: set | None = None) -> set:
    """Every base class of ``name`` found in the scanned sources."""
    seen = set() if seen is None else seen
    for base in sources.get(name, {}).get("bases", []):
        if base not in seen:
            seen.add(base)
            _ancestors(sources, base, seen)
    return seen


def _takes_prompt(sources: dict[str, dict[str, Any]], name: str,
                  seen: set | None = None) -> bool | None:
    """Whether ``name``'s ``__call__`` (its own or the nearest base's) takes a prompt."""
    seen = set() if seen is None else seen
    entry = sources.get(name)
    if entry is None or name in seen:
        return None
    seen.add(name)
    if entry["prompt"] is not None:
        return entry["prompt"]
    for base in entry["bases"]:
        found = _takes_prompt(sources, base, seen)
        if found is not None:
            return found
    return None


def _build_records() -> dict[str, Any]:
    """Build the registry data (imports diffusers' lazy top level, no pipeline module)."""
    import diffusers

    top = getattr(diffusers, "_class_to_module", None)
    pipelines_mod = sys.modules.get("diffusers.pipelines")
    if pipelines_mod is None:
        import diffusers.pipelines as pipelines_mod  # noqa: F811
    sub = getattr(pipelines_mod, "_class_to_module", None)
    if not isinstance(top, dict) or not isinstance(sub, dict):
        logger.warning("diffusers has no lazy import structure; falling back to a full scan")
        return _build_records_by_import()

    pipelines_dir = Path(pipelines_mod.__file__).parent
    sources = _scan_sources(pipelines_dir)

    pipelines: dict[str, dict[str, Any]] = {}
    for name, where in top.items():
        if where != "pipelines":
            continue  # dummies for missing optional deps live under utils.dummy_*
        subpkg = sub.get(name, "")
        is_auto = subpkg == "auto_pipeline" and name.startswith(_AUTO_PREFIX)
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
        is_auto = name.startswith(_AUTO_PREFIX)
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

# --------------------------------------------------------------------------------------
# In-process state
# --------------------------------------------------------------------------------------

_lock = threading.RLock()
_records: dict[str, Any] | None = None
_registry: LazyPipelineRegistry | None = None


def clear_caches() -> None:
    """Forget everything computed in this process (the disk cache is left alone)."""
    global _records, _registry
    with _lock:
        _records = _registry = None


def _get_records() -> dict[str, Any]:
    """Registry data: from the disk cache when valid, else built and (atomically) saved."""
    global _records
    with _lock:
        if _records is not None:
            return _records
        stamp = _diffusers_stamp()
        if stamp is None:
            raise ImportError("diffusers is not installed")
        data = _read_cache(stamp)
        if data is None:
            data = _build_records()
            data["stamp"] = stamp
            _write_cache(data)
        _records = data
        return data


class LazyPipelineRegistry(Mapping):
    """Read-only mapping of pipeline name -> class whose values are imported on first access.

    Keys are known without importing anything; ``registry[name]`` imports just that class.
    ``values()``/``items()`` import every class (as a full scan would), so avoid them. It is
    the shared, cached registry: read-only so that no caller can change it for everyone.
    """

    def __init__(self, names: list[str]) -> None:
        self._classes: dict[str, type | None] = dict.fromkeys(names)
        self._import_lock = threading.Lock()

    def __getitem__(self, name: str) -> type:
        value = self._classes[name]
        if value is None:
            with self._import_lock:
                value = self._classes[name] or _import_pipeline(name)
                self._classes[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def copy(self) -> dict[str, type]:
        """A plain dict of every class (imports them all), the caller's to change."""
        return dict(self.items())

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` has already been imported (never triggers an import)."""
        return self._classes.get(name) is not None

    def __repr__(self) -> str:
        return f"<LazyPipelineRegistry: {len(self)} pipelines>"


def _import_pipeline(name: str) -> type:
    """Import one pipeline class (through diffusers' lazy top level)."""
    import importlib

    import diffusers

    try:
        return getattr(diffusers, name)
    except AttributeError:
        record = _get_records()["pipelines"].get(name, {})
        module = importlib.import_module(record.get("module", "diffusers"))
        return getattr(module, name)


def get_pipeline_registry() -> dict[str, type]:
    """All pipeline classes (DiffusionPipeline subclasses + AutoPipelines), lazily imported.

    Cached: the same object on every call. Listing keys imports neither torch nor diffusers
    when the disk cache is warm.
    """
    global _registry
    with _lock:
        if _registry is None:
            _registry = LazyPipelineRegistry(sorted(_get_records()["pipelines"]))
        return _registry


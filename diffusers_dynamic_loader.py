"""Dynamic discovery and loading of Hugging Face diffusers pipelines.

New diffusers pipelines become usable without code changes: the pipeline names are read
from diffusers' own lazy import structure and the source files it points at, never from a
hand-written list, and a class is imported only when it is actually resolved.

Why it is built this way:

* Importing every pipeline module (what a naive ``dir(diffusers)`` scan does) costs
  seconds and hundreds of MB. Here the name registry (names, defining modules, whether
  deprecated, whether single-file loading is supported, a few facts used for ranking) is
  built once, without importing any pipeline module, and kept in a small JSON cache keyed
  by the diffusers version and install location. A fresh process can then list pipelines
  and tasks without importing torch or diffusers at all.
* Task aliases (``text-to-image``, ``img2img``, ``stable-diffusion-xl``...) are derived
  from class names by rules plus diffusers' own AutoPipeline mappings, and ranked: the
  AutoPipeline for a task first, deprecated pipelines last, a family alias to the family's
  plain class.
* Model ids are resolved offline first (local folder ``model_index.json``, single-file
  checkpoint keys, the Hugging Face cache), the Hub only when allowed and with a timeout.

Usage::

    from diffusers_dynamic_loader import load_diffusers_pipeline, resolve_pipeline_name

    resolve_pipeline_name(task="img2img")                 # 'AutoPipelineForImage2Image'
    pipe = load_diffusers_pipeline(model_id="/models/sd15", torch_dtype=torch.float16)

The cache directory is ``$DIFFUSERS_LOADER_CACHE_DIR``, else
``$XDG_CACHE_HOME/localai-diffusers``, else ``~/.cache/localai-diffusers``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "PipelineLoadError",
    "clear_caches",
    "discover_diffusers_classes",
    "get_available_classes",
    "get_available_pipelines",
    "get_available_tasks",
    "get_pipeline_info",
    "get_pipeline_registry",
    "get_task_aliases",
    "infer_pipeline_name_from_model_id",
    "load_diffusers_pipeline",
    "resolve_pipeline_class",
    "resolve_pipeline_name",
]

# Bump when the cache layout or the facts recorded in it change.
_CACHE_SCHEMA = 1
_AUTO_PREFIX = "AutoPipelineFor"
_DEFAULT_SINGLE_FILE_PIPELINE = "StableDiffusionPipeline"
_FALLBACK_PIPELINE = "DiffusionPipeline"
_HUB_TIMEOUT_S = 5.0
_MAX_SUGGESTIONS = 5


class PipelineLoadError(RuntimeError):
    """Raised when a resolved pipeline class fails to load; names the class and the model."""


# --------------------------------------------------------------------------------------
# Task vocabulary: task *words* found in class names -> canonical task (not per pipeline).
# --------------------------------------------------------------------------------------

_TASK_WORDS: list[tuple[str, str]] = [
    (r"Img2Img|Image2Image|ImageToImage|I2I", "image-to-image"),
    (r"Text2Image|TextToImage|Txt2Img|T2I", "text-to-image"),
    (r"Text2Video|TextToVideo|Txt2Vid|T2V", "text-to-video"),
    (r"Image2Video|ImageToVideo|Img2Vid|I2V", "image-to-video"),
    (r"Video2Video|VideoToVideo|Vid2Vid|V2V", "video-to-video"),
    (r"Text2Audio|TextToAudio", "text-to-audio"),
    (r"Audio2Audio|AudioToAudio", "audio-to-audio"),
    (r"Inpainting|Inpaint|Fill", "inpainting"),
    (r"Depth2Img|DepthToImage", "depth-to-image"),
    (
        r"LatentUpscale|LatentUpsample|Upscaler|Upscale|Upsample|SuperResolution|SR",
        "upscaling",
    ),
    (r"ImageVariation", "image-variation"),
    (r"InstructPix2Pix|Edit", "image-editing"),
]
_TASK_SYNONYMS: dict[str, list[str]] = {
    "text-to-image": ["txt2img", "text2image"],
    "image-to-image": ["img2img", "image2image"],
    "inpainting": ["inpaint"],
    "text-to-video": ["txt2vid", "text2video"],
    "image-to-video": ["img2vid", "image2video"],
    "video-to-video": ["vid2vid", "video2video"],
    "text-to-audio": ["txt2audio", "text2audio"],
    "upscaling": ["upscale", "super-resolution"],
    "depth-to-image": ["depth2img"],
    "image-editing": ["edit"],
}
_TASK_RE = re.compile(
    "(?:" + "|".join(f"(?P<t{i}>{pat})" for i, (pat, _) in enumerate(_TASK_WORDS)) + ")"
    r"(?=[A-Z0-9_]|$)"
)
# A plain family class (no task word) is a generator for its modality.
_MODALITY_WORDS: list[tuple[str, str]] = [
    (r"Video|Animate", "text-to-video"),
    (r"Audio|Music", "text-to-audio"),
]
_TOKEN_RE = re.compile(r"[A-Z]+[0-9]*(?=[A-Z][a-z]|_|$)|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")


def _norm(text: str) -> str:
    """Key used to compare aliases: lowercase alphanumerics only (hyphens/case ignored)."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _slug(text: str) -> str:
    """Alias display form: lowercase, hyphen separated, no stray punctuation."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _tokens(camel: str) -> list[str]:
    """Split a CamelCase fragment into lowercase words; a lone capital joins the word before."""
    out: list[str] = []
    for part in camel.split("_"):
        for tok in _TOKEN_RE.findall(part):
            if len(tok) == 1 and tok.isupper() and out and out[-1][-1:].islower():
                out[-1] += tok.lower()
            else:
                out.append(tok.lower())
    return out


def _stem(name: str) -> str:
    """Class name without the word ``Pipeline`` (wherever it appears)."""
    return name.replace("Pipeline", "")


def _split_name(name: str) -> tuple[list[str], list[str], str]:
    """(family tokens, tasks named in the class name, text after the first task word)."""
    stem = _stem(name)
    tasks: list[str] = []
    first = None
    for match in _TASK_RE.finditer(stem):
        idx = int(next(k for k, v in match.groupdict().items() if v)[1:])
        task = _TASK_WORDS[idx][1]
        if task not in tasks:
            tasks.append(task)
        if first is None:
            first = match
    family = stem[: first.start()] if first else stem
    rest = stem[first.end() :] if first else ""
    return _tokens(family), tasks, rest


def _camel_to_kebab(name: str) -> str:
    """``StableDiffusionXLPipeline`` -> ``stable-diffusion-xl-pipeline``.

    Uses the same word split as the alias rules (acronyms stay whole, digits stay with the
    word before them), so the kebab form of a class and its aliases agree. Kept under this
    name because LocalAI's loader tests call it.
    """
    return _slug("-".join(_tokens(name)))


def _extract_task_keywords(class_name: str) -> list[str]:
    """Aliases a pipeline class name implies, from the name alone (no registry, no import).

    The family (``StableDiffusionImg2ImgPipeline`` -> ``stable-diffusion``) and each task
    word in the name with its synonyms (``image-to-image``, ``img2img``...). A name without
    a task word (``WanPipeline``, ``StableVideoDiffusionPipeline``) does not say its task, so
    none is guessed: :func:`get_task_aliases` adds it from facts read from the sources
    (AutoPipeline mappings, whether the call takes a prompt). Kept under this name because
    LocalAI's loader tests call it.
    """
    auto = class_name.startswith(_AUTO_PREFIX)  # AutoPipelineFor<Task>: a task, no family
    family, tasks, _rest = _split_name(class_name[len(_AUTO_PREFIX) :] if auto else class_name)
    out: list[str] = []
    family_alias = "" if auto else "-".join(family)
    for alias in [family_alias, *(a for t in tasks for a in (t, *_TASK_SYNONYMS.get(t, [])))]:
        alias = _slug(alias)
        if alias and alias not in out:
            out.append(alias)
    return out


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

    def ancestors(name: str, seen: set | None = None) -> set:
        seen = set() if seen is None else seen
        for base in sources.get(name, {}).get("bases", []):
            if base not in seen:
                seen.add(base)
                ancestors(base, seen)
        return seen

    def prompt_of(name: str, seen: set | None = None) -> bool | None:
        seen = set() if seen is None else seen
        entry = sources.get(name)
        if entry is None or name in seen:
            return None
        seen.add(name)
        if entry["prompt"] is not None:
            return entry["prompt"]
        for base in entry["bases"]:
            found = prompt_of(base, seen)
            if found is not None:
                return found
        return None

    pipelines: dict[str, dict[str, Any]] = {}
    for name, where in top.items():
        if where != "pipelines":
            continue  # dummies for missing optional deps live under utils.dummy_*
        subpkg = sub.get(name, "")
        is_auto = subpkg == "auto_pipeline" and name.startswith(_AUTO_PREFIX)
        entry = sources.get(name)
        if entry is not None:
            anc = ancestors(name)
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
            "prompt": prompt_of(name),
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
_aliases: dict[str, list[str]] | None = None
_alias_index: dict[str, str] | None = None
_class_registries: dict[tuple[str, bool], dict[str, type]] = {}
_model_id_cache: dict[str, str] = {}


def clear_caches() -> None:
    """Forget everything computed in this process (the disk cache is left alone)."""
    global _records, _registry, _aliases, _alias_index
    with _lock:
        _records = _registry = _aliases = _alias_index = None
        _class_registries.clear()
        _model_id_cache.clear()


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


_UNLOADED = object()


class LazyPipelineRegistry(dict):
    """``dict`` of pipeline name -> class whose values are imported on first access.

    Keys are known without importing anything; ``registry[name]`` imports just that class.
    ``values()``/``items()`` import every class (as a full scan would), so avoid them.
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__((name, _UNLOADED) for name in names)

    def __getitem__(self, name: str) -> type:
        value = super().__getitem__(name)
        if value is _UNLOADED:
            value = _import_pipeline(name)
            super().__setitem__(name, value)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def values(self) -> list[type]:  # type: ignore[override]
        return [self[name] for name in self]

    def items(self) -> list[tuple[str, type]]:  # type: ignore[override]
        return [(name, self[name]) for name in self]

    def copy(self) -> dict[str, type]:
        return dict(self.items())

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` has already been imported (never triggers an import)."""
        return super().get(name, _UNLOADED) is not _UNLOADED

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


# --------------------------------------------------------------------------------------
# Task aliases
# --------------------------------------------------------------------------------------


def _build_aliases(records: dict[str, Any]) -> dict[str, list[str]]:
    pipes: dict[str, dict[str, Any]] = records["pipelines"]
    auto_maps: dict[str, list[list[str]]] = records.get("auto", {})
    # task -> {class: position in diffusers' AutoPipeline mapping}
    mapped: dict[str, dict[str, int]] = {}
    for task, items in auto_maps.items():
        for pos, (_key, cls) in enumerate(items):
            mapped.setdefault(task, {}).setdefault(cls, pos)

    info: dict[str, dict[str, Any]] = {}
    for name, rec in pipes.items():
        if name == _FALLBACK_PIPELINE:
            continue
        if rec.get("auto"):
            _fam, tasks, _rest = _split_name(name[len(_AUTO_PREFIX) :])
            info[name] = {"family": (), "tasks": tasks, "explicit": True, "extra": 0}
            continue
        family, tasks, rest = _split_name(name)
        explicit = bool(tasks)
        if not tasks and rec.get("prompt") is not False:
            stem = _stem(name)
            tasks = [t for pat, t in _MODALITY_WORDS if re.search(pat, stem)][:1]
            tasks = tasks or ["text-to-image"]
        info[name] = {
            "family": tuple(family),
            "tasks": tasks,
            "explicit": explicit,
            "extra": len(_tokens(rest)),
        }
    for task, classes in mapped.items():  # diffusers says this class serves this task
        for cls in classes:
            if cls in info and task not in info[cls]["tasks"]:
                info[cls]["tasks"] = info[cls]["tasks"] + [task]

    # Families diffusers' AutoPipelines know, in diffusers' own order (text-to-image first).
    task_order = ["text-to-image", "image-to-image", "inpainting"]
    ordered_tasks = sorted(
        auto_maps, key=lambda t: (task_order.index(t) if t in task_order else 99, t)
    )
    family_pos: dict[str, int] = {}
    for task in ordered_tasks:
        for _key, cls in auto_maps[task]:
            if cls in info:
                family_pos.setdefault(_norm("".join(info[cls]["family"])), len(family_pos))

    def task_key(task: str, name: str) -> tuple:
        rec, meta = pipes[name], info[name]
        return (
            not rec.get("auto"),
            bool(rec.get("deprecated")),
            name not in mapped.get(task, {}),
            mapped.get(task, {}).get(name, 0),
            family_pos.get(_norm("".join(meta["family"])), len(family_pos)),
            not meta["explicit"] and task != "text-to-image",
            len(meta["family"]) + meta["extra"] + len(meta["tasks"]),
            len(name),
            name,
        )

    aliases: dict[str, list[str]] = {}
    display: dict[str, str] = {}  # normalised key -> first display form

    def add(alias: str, names: list[str]) -> None:
        alias = _slug(alias)
        if not alias or not names:
            return
        key = _norm(alias)
        shown = display.setdefault(key, alias)
        bucket = aliases.setdefault(shown, [])
        bucket.extend(n for n in names if n not in bucket)

    by_task: dict[str, list[str]] = {}
    for name, meta in info.items():
        for task in meta["tasks"]:
            by_task.setdefault(task, []).append(name)
    for task, names in by_task.items():
        ranked = sorted(names, key=lambda n, t=task: task_key(t, n))
        add(task, ranked)
        for syn in _TASK_SYNONYMS.get(task, []):
            add(syn, ranked)

    # Families: diffusers' own AutoPipeline keys first (they name the plain class per task).
    for task in ordered_tasks:
        for key, cls in auto_maps[task]:
            if cls in pipes and not pipes[cls].get("deprecated"):
                add(key, [cls])

    families = {meta["family"] for meta in info.values() if meta["family"]}
    members: dict[tuple[str, ...], list[str]] = {}
    for name, meta in info.items():
        fam = meta["family"]
        for k in range(1, len(fam) + 1):
            if fam[:k] in families:
                members.setdefault(fam[:k], []).append(name)

    def family_key(fam: tuple[str, ...], name: str) -> tuple:
        meta = info[name]
        return (
            bool(pipes[name].get("deprecated")),
            meta["family"] != fam,
            meta["explicit"],
            len(meta["family"]) + meta["extra"] + len(meta["tasks"]),
            len(name),
            name,
        )

    for fam, names in members.items():
        ranked = sorted(names, key=lambda n, f=fam: family_key(f, n))
        key = _norm("".join(fam))
        if key in display:  # e.g. diffusers' "stable-diffusion-3" == our "stable-diffusion3"
            bucket = aliases[display[key]]
            bucket.extend(n for n in ranked if n not in bucket)
        else:
            add("-".join(fam), ranked)

    # Ranking: never let a deprecated pipeline lead while a live one serves the alias.
    for alias, names in aliases.items():
        live = [n for n in names if not pipes[n].get("deprecated")]
        aliases[alias] = live + [n for n in names if pipes[n].get("deprecated")]
    return dict(sorted(aliases.items()))


def get_task_aliases() -> dict[str, list[str]]:
    """Alias -> pipeline class names, best first. Cached; imports nothing when cache is warm."""
    global _aliases, _alias_index
    with _lock:
        if _aliases is None:
            _aliases = _build_aliases(_get_records())
            _alias_index = {_norm(alias): alias for alias in _aliases}
        return _aliases


def get_available_pipelines() -> list[str]:
    """Sorted pipeline class names."""
    return sorted(get_pipeline_registry().keys())


def get_available_tasks() -> list[str]:
    """Sorted task/family aliases accepted by ``task=``."""
    return sorted(get_task_aliases())


# --------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------


def _suggest(word: str, choices: list[str], what: str, helper: str) -> str:
    """Short, user-facing hint: the closest names plus how many others exist."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=_MAX_SUGGESTIONS, cutoff=0.6)
    shown = [lowered[c] for c in close] or sorted(choices)[:_MAX_SUGGESTIONS]
    more = len(choices) - len(shown)
    label = "closest matches" if close else "e.g."
    tail = f" ... and {more} more; see {helper}()" if more > 0 else ""
    return f"Available {what} ({label}): {', '.join(shown)}{tail}"


def _lookup_class_name(class_name: str) -> str:
    registry = get_pipeline_registry()
    if class_name in registry:
        return class_name
    lowered = {name.lower(): name for name in registry}
    found = lowered.get(class_name.strip().lower())
    if found:
        return found
    raise ValueError(
        f"Unknown pipeline class '{class_name}'. "
        + _suggest(class_name, list(registry), "pipelines", "get_available_pipelines")
    )


def _lookup_task(task: str) -> str:
    aliases = get_task_aliases()
    assert _alias_index is not None
    alias = _alias_index.get(_norm(task))
    if alias and aliases[alias]:
        return aliases[alias][0]
    raise ValueError(
        f"Unknown task '{task}'. "
        + _suggest(_slug(task) or task, list(aliases), "tasks", "get_available_tasks")
    )


def resolve_pipeline_name(
    class_name: str | None = None,
    task: str | None = None,
    model_id: str | None = None,
) -> str:
    """Like :func:`resolve_pipeline_class` but returns the class *name* and imports nothing.

    Priority: ``class_name`` (case-insensitive), then ``task`` alias, then ``model_id``
    (see :func:`infer_pipeline_name_from_model_id`).
    """
    if class_name:
        return _lookup_class_name(class_name)
    if task:
        return _lookup_task(task)
    if model_id:
        return infer_pipeline_name_from_model_id(model_id)
    raise ValueError(
        "Must provide at least one of: class_name, task or model_id "
        "(see get_available_pipelines() and get_available_tasks())."
    )


def resolve_pipeline_class(
    class_name: str | None = None,
    task: str | None = None,
    model_id: str | None = None,
) -> type:
    """Resolve a pipeline class from a class name, a task alias or a model id."""
    return get_pipeline_registry()[resolve_pipeline_name(class_name, task, model_id)]


# --------------------------------------------------------------------------------------
# Model id -> pipeline name (offline first)
# --------------------------------------------------------------------------------------

_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
# diffusers' checkpoint *types* (infer_diffusers_model_type) -> pipeline; types that are
# components (controlnet, vae, motion adapters) fall through to the default pipeline.
_CHECKPOINT_TYPE_RULES: list[tuple[str, str]] = [
    (r"^xl_inpaint", "StableDiffusionXLInpaintPipeline"),
    (r"^xl_refiner", "StableDiffusionXLImg2ImgPipeline"),
    (r"^(xl_base|playground)", "StableDiffusionXLPipeline"),
    (r"^inpainting", "StableDiffusionInpaintPipeline"),
    (r"^upscale", "StableDiffusionUpscalePipeline"),
    (r"^instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline"),
    (r"^v[12]$", "StableDiffusionPipeline"),
    (r"^sd3", "StableDiffusion3Pipeline"),
    (r"^stable_cascade_stage_b", "StableCascadeDecoderPipeline"),
    (r"^stable_cascade_stage_c", "StableCascadePriorPipeline"),
    (r"^flux-fill", "FluxFillPipeline"),
    (r"^flux-depth", "FluxControlPipeline"),
    (r"^flux-(dev|schnell)", "FluxPipeline"),
    (r"^flux-2", "Flux2Pipeline"),
    (r"^auraflow", "AuraFlowPipeline"),
    (r"^chroma", "ChromaPipeline"),
    (r"^ltx2", "LTX2Pipeline"),
    (r"^ltx-video", "LTXPipeline"),
    (r"^mochi", "MochiPipeline"),
    (r"^hunyuan-video", "HunyuanVideoPipeline"),
    (r"^lumina2", "Lumina2Pipeline"),
    (r"^sana", "SanaPipeline"),
    (r"^wan-t2v", "WanPipeline"),
    (r"^wan-i2v", "WanImageToVideoPipeline"),
    (r"^wan-vace", "WanVACEPipeline"),
    (r"^wan-animate", "WanAnimatePipeline"),
    (r"^hidream", "HiDreamImagePipeline"),
    (r"^cosmos-1\.0-t2w", "CosmosTextToWorldPipeline"),
    (r"^cosmos-1\.0-v2w", "CosmosVideoToWorldPipeline"),
    (r"^cosmos-2\.0-t2i", "Cosmos2TextToImagePipeline"),
    (r"^cosmos-2\.0-v2w", "Cosmos2VideoToWorldPipeline"),
    (r"^z-image-turbo-controlnet", "ZImageControlNetPipeline"),
    (r"^z-image", "ZImagePipeline"),
    (r"^qwen-image", "QwenImagePipeline"),
    (r"^krea2", "Krea2Pipeline"),
]


def _known(name: str | None, default: str) -> str:
    """Map a class name (any case) onto the registry, else ``default``."""
    if not name or not isinstance(name, str):
        return default
    try:
        return _lookup_class_name(name)
    except ValueError:
        logger.info("Model declares unknown pipeline %r; using %s", name, default)
        return default


def _class_from_model_index(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        logger.warning("Cannot read %s: %s", path, exc)
        return None
    return data.get("_class_name") if isinstance(data, dict) else None


class _Shape:
    """Stands in for a tensor in diffusers' key/shape checks (only ``.shape`` is read)."""

    __slots__ = ("shape",)

    def __init__(self, shape: Any) -> None:
        self.shape = tuple(shape)


def _safetensors_header(path: Path) -> dict[str, _Shape]:
    """Tensor names and shapes from a .safetensors header (reads a few KB, no torch)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            raise ValueError("implausible safetensors header")
        header = json.loads(fh.read(size))
    return {k: _Shape(v.get("shape", ())) for k, v in header.items() if k != "__metadata__"}


def _checkpoint_view(path: Path) -> dict[str, Any]:
    if path.suffix in (".safetensors", ".sft"):
        return _safetensors_header(path)
    import torch  # pickled checkpoints need torch; mmap keeps it cheap

    state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state if isinstance(state, dict) else {}


def _class_from_checkpoint(path: Path) -> str:
    """Ask diffusers what a single-file checkpoint is; map its type to a pipeline."""
    try:
        view = _checkpoint_view(path)
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        model_type = infer_diffusers_model_type(view)
    except Exception as exc:  # unknown layout, unreadable file, old diffusers...
        logger.info(
            "Cannot infer pipeline from %s (%s); using %s", path, exc, _DEFAULT_SINGLE_FILE_PIPELINE
        )
        return _DEFAULT_SINGLE_FILE_PIPELINE
    for pattern, name in _CHECKPOINT_TYPE_RULES:
        if re.search(pattern, str(model_type)):
            return _known(name, _DEFAULT_SINGLE_FILE_PIPELINE)
    return _DEFAULT_SINGLE_FILE_PIPELINE


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _class_from_hub(repo_id: str) -> str | None:
    """``_class_name`` from the HF cache, then (online only) the Hub, with a timeout."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # invalid repo id etc.
        cached = None
    if isinstance(cached, str):
        return _class_from_model_index(Path(cached))
    if _hub_offline():
        return None
    result: dict[str, str | None] = {}

    def fetch() -> None:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo_id, "model_index.json", etag_timeout=_HUB_TIMEOUT_S)
            result["name"] = _class_from_model_index(Path(path))
        except Exception as exc:
            logger.info("No model_index.json for %s on the Hub: %s", repo_id, exc)

    worker = threading.Thread(target=fetch, name="diffusers-model-index", daemon=True)
    worker.start()
    worker.join(_HUB_TIMEOUT_S * 2)
    return result.get("name")


def infer_pipeline_name_from_model_id(model_id: str) -> str:
    """Pipeline class name for a model id, offline first; cached per process.

    * local folder: ``_class_name`` from its ``model_index.json``;
    * single checkpoint file: inferred from its tensor names/shapes by diffusers, default
      ``StableDiffusionPipeline``;
    * Hub id: cached ``model_index.json``, then the Hub (skipped with ``HF_HUB_OFFLINE=1``).

    Falls back to ``DiffusionPipeline`` (which reads ``model_index.json`` itself).
    """
    with _lock:
        if model_id in _model_id_cache:
            return _model_id_cache[model_id]
    path = Path(os.path.expanduser(model_id))
    if path.is_dir():
        index = path / "model_index.json"
        found = _class_from_model_index(index) if index.is_file() else None
        name = _known(found, _FALLBACK_PIPELINE)
    elif path.is_file():
        if path.suffix.lower() in _SINGLE_FILE_SUFFIXES:
            name = _class_from_checkpoint(path)
        elif path.name == "model_index.json":
            name = _known(_class_from_model_index(path), _FALLBACK_PIPELINE)
        else:
            name = _FALLBACK_PIPELINE
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id) and not model_id.endswith(
        _SINGLE_FILE_SUFFIXES
    ):
        name = _known(_class_from_hub(model_id), _FALLBACK_PIPELINE)
    else:
        name = _FALLBACK_PIPELINE
    with _lock:
        _model_id_cache[model_id] = name
    return name


# --------------------------------------------------------------------------------------
# Loading and introspection
# --------------------------------------------------------------------------------------


def _supports_single_file(cls: type) -> bool:
    return callable(getattr(cls, "from_single_file", None))


def load_diffusers_pipeline(
    class_name: str | None = None,
    task: str | None = None,
    model_id: str | None = None,
    from_single_file: bool = False,
    **kwargs: Any,
) -> Any:
    """Resolve the pipeline class and load ``model_id`` with it.

    ``kwargs`` go unchanged to ``from_pretrained`` / ``from_single_file``. Failures are
    raised as :class:`PipelineLoadError` naming the class and the model (cause chained).
    """
    if not model_id:
        if not class_name and not task:
            raise ValueError(
                "Must provide at least one of: class_name, task or model_id; "
                "model_id is required to load a pipeline."
            )
        resolve_pipeline_name(class_name, task)  # report unknown names first
        raise ValueError("model_id is required to load a pipeline.")
    name = resolve_pipeline_name(class_name, task, model_id)
    cls = get_pipeline_registry()[name]
    if from_single_file:
        if not _supports_single_file(cls):
            raise ValueError(
                f"Pipeline class {name} does not support from_single_file(); "
                "load a diffusers folder/repo with from_pretrained instead."
            )
        loader = cls.from_single_file
    else:
        loader = cls.from_pretrained
    try:
        return loader(model_id, **kwargs)
    except Exception as exc:
        method = "from_single_file" if from_single_file else "from_pretrained"
        raise PipelineLoadError(
            f"Failed to load pipeline {name} from '{model_id}' ({method}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def get_pipeline_info(class_name: str) -> dict[str, Any]:
    """Name, aliases, single-file support and docstring of one pipeline (imports it)."""
    try:
        name = _lookup_class_name(class_name)
    except ValueError:
        raise ValueError(
            f"Unknown pipeline '{class_name}'. "
            + _suggest(
                class_name, get_available_pipelines(), "pipelines", "get_available_pipelines"
            )
        ) from None
    record = _get_records()["pipelines"][name]
    cls = get_pipeline_registry()[name]
    doc = (cls.__doc__ or "").strip()
    return {
        "name": name,
        "aliases": [alias for alias, names in get_task_aliases().items() if name in names],
        "supports_single_file": _supports_single_file(cls),
        "docstring": doc[:500] or None,
        "module": record.get("module"),
        "deprecated": bool(record.get("deprecated")),
    }


# --------------------------------------------------------------------------------------
# Generic class discovery (schedulers, models, ...)
# --------------------------------------------------------------------------------------


def discover_diffusers_classes(base_class_name: str, include_base: bool = True) -> dict[str, type]:
    """Every diffusers top-level class that subclasses ``base_class_name``. Cached.

    This imports the candidates (use the pipeline registry for pipelines: it is lazy).
    Dummy placeholders for missing optional dependencies are skipped.
    """
    key = (base_class_name, include_base)
    with _lock:
        if key in _class_registries:
            return _class_registries[key]
    import importlib

    import diffusers

    base = getattr(diffusers, base_class_name, None)
    if not isinstance(base, type):
        for submodule in ("schedulers", "models", "pipelines", "loaders"):
            try:
                base = getattr(
                    importlib.import_module(f"diffusers.{submodule}"), base_class_name, None
                )
            except ImportError:
                base = None
            if isinstance(base, type):
                break
    if not isinstance(base, type):
        raise ValueError(f"Could not find base class '{base_class_name}' in diffusers")
    modules = getattr(diffusers, "_class_to_module", {}) or {}
    found: dict[str, type] = {}
    for name in dir(diffusers):
        if str(modules.get(name, "")).startswith("utils.dummy"):
            continue
        try:
            obj = getattr(diffusers, name)
        except Exception:  # broken optional dependency
            continue
        if isinstance(obj, type) and issubclass(obj, base):
            if include_base or obj is not base:
                found[name] = obj
    if include_base:
        found.setdefault(base_class_name, base)
    else:
        found.pop(base_class_name, None)
    with _lock:
        _class_registries[key] = found
    return found


def get_available_classes(base_class_name: str) -> list[str]:
    """Sorted names from :func:`discover_diffusers_classes`."""
    return sorted(discover_diffusers_classes(base_class_name))

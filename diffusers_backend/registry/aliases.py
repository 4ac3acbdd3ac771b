"""Task aliases derived from class names and diffusers' AutoPipeline tables, ranked, and
the resolution of a class name or task to a pipeline class.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from typing import Any

from .names import (
    _AUTO_PREFIX,
    _FALLBACK_PIPELINE,
    _MODALITY_WORDS,
    _TASK_SYNONYMS,
    _norm,
    _slug,
    _split_name,
    _stem,
    _tokens,
)
from .store import _get_records, get_pipeline_registry

logger = logging.getLogger("diffusers_dynamic_loader")

_MAX_SUGGESTIONS = 5
_lock = threading.RLock()
_aliases: dict[str, list[str]] | None = None
_alias_index: dict[str, str] | None = None


def clear() -> None:
    """Forget the aliases computed in this process."""
    global _aliases, _alias_index
    with _lock:
        _aliases = _alias_index = None

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
        from .sniffing import infer_pipeline_name_from_model_id  # sniffing needs this module

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


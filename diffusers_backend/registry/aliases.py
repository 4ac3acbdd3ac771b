"""Task and family aliases derived from class names and diffusers' AutoPipeline tables, and
ranked: the AutoPipeline for a task first, deprecated pipelines last, a family alias to the
family's plain class. Pure: records in, table out (the store keeps the result).
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

from diffusers_backend.registry.names import (
    AUTO_PREFIX,
    FALLBACK_PIPELINE,
    MODALITY_WORDS,
    TASK_SYNONYMS,
    name_stem,
    norm,
    slug,
    split_name,
    tokens,
)


class _TaskRank(NamedTuple):
    """Sort key of a pipeline under a task alias: the first field that differs decides."""

    not_auto: bool  # an AutoPipeline for the task comes first
    deprecated: bool  # deprecated pipelines last
    not_mapped: bool  # then the classes diffusers' AutoPipeline table names for the task
    mapped_position: int  # in that table's order
    family_position: int  # families in diffusers' AutoPipeline order (SD before the rest)
    implicit_task: bool  # a task the name does not say (a plain family class) after explicit
    name_parts: int  # fewer words in the name: the more general class
    length: int
    name: str


class _FamilyRank(NamedTuple):
    """Sort key of a pipeline under a family alias (``stable-diffusion-xl``)."""

    deprecated: bool
    other_family: bool  # a sub-family's class after the family's own
    explicit_task: bool  # the plain (no task word) class first
    name_parts: int
    length: int
    name: str


class _AliasBuilder:
    """Derives the alias table from the registry records; see :func:`get_task_aliases`."""

    def __init__(self, records: dict[str, Any]) -> None:
        self.pipes: dict[str, dict[str, Any]] = records["pipelines"]
        self.auto_maps: dict[str, list[list[str]]] = records.get("auto", {})
        # task -> {class: position in diffusers' AutoPipeline mapping}
        self.mapped: dict[str, dict[str, int]] = {}
        for task, items in self.auto_maps.items():
            for pos, (_key, cls) in enumerate(items):
                self.mapped.setdefault(task, {}).setdefault(cls, pos)
        self.info = self._name_facts()
        # Families diffusers' AutoPipelines know, in diffusers' own order (text-to-image first).
        task_order = ["text-to-image", "image-to-image", "inpainting"]
        self.ordered_tasks = sorted(
            self.auto_maps, key=lambda t: (task_order.index(t) if t in task_order else 99, t))
        self.family_pos: dict[str, int] = {}
        for task in self.ordered_tasks:
            for _key, cls in self.auto_maps[task]:
                if cls in self.info:
                    family = norm("".join(self.info[cls]["family"]))
                    self.family_pos.setdefault(family, len(self.family_pos))
        self.aliases: dict[str, list[str]] = {}
        self.display: dict[str, str] = {}  # normalised key -> first display form

    def _name_facts(self) -> dict[str, dict[str, Any]]:
        """Per class: family words, tasks (named, implied, or from diffusers' tables)."""
        info: dict[str, dict[str, Any]] = {}
        for name, rec in self.pipes.items():
            if name == FALLBACK_PIPELINE:
                continue
            if rec.get("auto"):
                _fam, tasks, _rest = split_name(name[len(AUTO_PREFIX) :])
                info[name] = {"family": (), "tasks": tasks, "explicit": True, "extra": 0}
                continue
            family, tasks, rest = split_name(name)
            explicit = bool(tasks)
            if not tasks and rec.get("prompt") is not False:
                stem = name_stem(name)
                tasks = [t for pat, t in MODALITY_WORDS if re.search(pat, stem)][:1]
                tasks = tasks or ["text-to-image"]
            info[name] = {"family": tuple(family), "tasks": tasks, "explicit": explicit,
                          "extra": len(tokens(rest))}
        for task, classes in self.mapped.items():  # diffusers says this class serves it
            for cls in classes:
                if cls in info and task not in info[cls]["tasks"]:
                    info[cls]["tasks"] = info[cls]["tasks"] + [task]
        return info

    def _parts(self, name: str) -> int:
        meta = self.info[name]
        return len(meta["family"]) + int(meta["extra"]) + len(meta["tasks"])

    def task_rank(self, task: str, name: str) -> _TaskRank:
        rec, meta = self.pipes[name], self.info[name]
        mapped = self.mapped.get(task, {})
        return _TaskRank(
            not_auto=not rec.get("auto"), deprecated=bool(rec.get("deprecated")),
            not_mapped=name not in mapped, mapped_position=mapped.get(name, 0),
            family_position=self.family_pos.get(norm("".join(meta["family"])),
                                                len(self.family_pos)),
            implicit_task=not meta["explicit"] and task != "text-to-image",
            name_parts=self._parts(name), length=len(name), name=name)

    def family_rank(self, family: tuple[str, ...], name: str) -> _FamilyRank:
        meta = self.info[name]
        return _FamilyRank(
            deprecated=bool(self.pipes[name].get("deprecated")),
            other_family=meta["family"] != family, explicit_task=meta["explicit"],
            name_parts=self._parts(name), length=len(name), name=name)

    def add(self, alias: str, names: list[str]) -> None:
        alias = slug(alias)
        if not alias or not names:
            return
        shown = self.display.setdefault(norm(alias), alias)
        bucket = self.aliases.setdefault(shown, [])
        bucket.extend(n for n in names if n not in bucket)

    def build(self) -> dict[str, list[str]]:
        self._add_tasks()
        # Families: diffusers' own AutoPipeline keys first (they name the plain class per task).
        for task in self.ordered_tasks:
            for key, cls in self.auto_maps[task]:
                if cls in self.pipes and not self.pipes[cls].get("deprecated"):
                    self.add(key, [cls])
        self._add_families()
        # Never let a deprecated pipeline lead while a live one serves the alias.
        deprecated = {n for n, rec in self.pipes.items() if rec.get("deprecated")}
        for alias, names in self.aliases.items():
            self.aliases[alias] = ([n for n in names if n not in deprecated]
                                   + [n for n in names if n in deprecated])
        return dict(sorted(self.aliases.items()))

    def _add_tasks(self) -> None:
        by_task: dict[str, list[str]] = {}
        for name, meta in self.info.items():
            for task in meta["tasks"]:
                by_task.setdefault(task, []).append(name)
        for task, names in by_task.items():
            ranked = sorted(names, key=functools.partial(self.task_rank, task))
            self.add(task, ranked)
            for synonym in TASK_SYNONYMS.get(task, []):
                self.add(synonym, ranked)

    def _add_families(self) -> None:
        families = {meta["family"] for meta in self.info.values() if meta["family"]}
        members: dict[tuple[str, ...], list[str]] = {}
        for name, meta in self.info.items():
            family = meta["family"]
            for k in range(1, len(family) + 1):
                if family[:k] in families:
                    members.setdefault(family[:k], []).append(name)
        for family, names in members.items():
            ranked = sorted(names, key=functools.partial(self.family_rank, family))
            key = norm("".join(family))
            if key in self.display:  # diffusers' "stable-diffusion-3" == our "stable-diffusion3"
                bucket = self.aliases[self.display[key]]
                bucket.extend(n for n in ranked if n not in bucket)
            else:
                self.add("-".join(family), ranked)


def build_aliases(records: dict[str, Any]) -> dict[str, list[str]]:
    """Alias -> pipeline class names, best first, from the registry records (pure)."""
    return _AliasBuilder(records).build()

"""The pipeline registry: one object holding everything the loader works out once per
process (the records, the task aliases, the classes model ids resolved to, the class
registries discovered by base class), behind one lock with one ``clear()``.

It also owns the lookups every caller needs: a class name in any case, a task alias, and the
closest names to a word that matches neither (for "did you mean" messages).
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from diffusers_backend.registry import disk_cache
from diffusers_backend.registry.aliases import build_aliases
from diffusers_backend.registry.names import norm
from diffusers_backend.registry.scan import build_records

MAX_SUGGESTIONS = 5


class LazyPipelineRegistry(Mapping[str, type[Any]]):
    """Read-only mapping of pipeline name -> class whose values are imported on first access.

    Keys are known without importing anything; ``registry[name]`` imports just that class.
    ``values()``/``items()`` import every class (as a full scan would), so avoid them. It is
    the shared, cached registry: read-only so that no caller can change it for everyone.
    """

    def __init__(self, modules: Mapping[str, str], lock: threading.RLock) -> None:
        self._modules = dict(modules)  # name -> defining module (from the records)
        self._classes: dict[str, type[Any] | None] = dict.fromkeys(sorted(modules))
        self._lock = lock

    def __getitem__(self, name: str) -> type[Any]:
        value = self._classes[name]
        if value is None:
            with self._lock:
                value = self._classes[name] or self._import(name)
                self._classes[name] = value
        return value

    def _import(self, name: str) -> type[Any]:
        """Import one pipeline class (through diffusers' lazy top level)."""
        import diffusers

        try:
            found = getattr(diffusers, name)
        except AttributeError:
            found = getattr(importlib.import_module(self._modules.get(name) or "diffusers"), name)
        if not isinstance(found, type):
            raise TypeError(f"diffusers.{name} is not a class")
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def copy(self) -> dict[str, type[Any]]:
        """A plain dict of every class (imports them all), the caller's to change."""
        return dict(self.items())

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` has already been imported (never triggers an import)."""
        return self._classes.get(name) is not None

    def __repr__(self) -> str:
        return f"<LazyPipelineRegistry: {len(self)} pipelines>"


def closest(word: str, choices: Iterable[str], n: int = MAX_SUGGESTIONS) -> list[str]:
    """The ``n`` choices nearest to ``word``, closest first (case, hyphens and underscores
    ignored), so a typo's intended name leads the list whatever its alphabetical place."""
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(norm(word) or word.lower())
    scored = []
    for choice in dict.fromkeys(choices):
        matcher.set_seq1(norm(choice))
        scored.append((-matcher.ratio(), len(choice), choice))
    return [choice for *_, choice in sorted(scored)[:n]]


def suggest(word: str, choices: list[str], what: str, helper: str) -> str:
    """Short, user-facing hint: the closest names plus how many others exist."""
    shown = closest(word, choices)
    more = len(choices) - len(shown)
    tail = f" ... and {more} more; see {helper}()" if more > 0 else ""
    return f"Available {what} (closest matches): {', '.join(shown)}{tail}"


class PipelineRegistry:
    """Everything computed about diffusers' pipelines in this process, built on first use."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._records: dict[str, Any] | None = None
        self._pipelines: LazyPipelineRegistry | None = None
        self._aliases: dict[str, list[str]] | None = None
        self._alias_index: dict[str, str] = {}  # normalised alias -> alias as shown
        self._model_ids: dict[str, str] = {}  # model id -> pipeline class name
        self._class_registries: dict[tuple[str, bool], dict[str, type]] = {}

    def clear(self) -> None:
        """Forget everything computed in this process (the disk cache is left alone)."""
        with self._lock:
            self._records = self._pipelines = self._aliases = None
            self._alias_index = {}
            self._model_ids.clear()
            self._class_registries.clear()

    # -- records, classes, aliases ------------------------------------------------------
    def records(self) -> dict[str, Any]:
        """Registry data: from the disk cache when valid, else built and (atomically) saved."""
        with self._lock:
            if self._records is not None:
                return self._records
            stamp = disk_cache.diffusers_stamp()
            if stamp is None:
                raise ImportError("diffusers is not installed")
            data = disk_cache.read_cache(stamp)
            if data is None:
                data = build_records()
                data["stamp"] = stamp
                disk_cache.write_cache(data)
            self._records = data
            return data

    def pipelines(self) -> LazyPipelineRegistry:
        """Pipeline name -> class, imported on first access; the same object every call."""
        with self._lock:
            if self._pipelines is None:
                records = self.records()["pipelines"]
                modules = {name: str(rec.get("module") or "") for name, rec in records.items()}
                self._pipelines = LazyPipelineRegistry(modules, self._lock)
            return self._pipelines

    def aliases(self) -> dict[str, list[str]]:
        """Alias -> pipeline class names, best first."""
        with self._lock:
            if self._aliases is None:
                self._aliases = build_aliases(self.records())
                self._alias_index = {norm(alias): alias for alias in self._aliases}
            return self._aliases

    def alias(self, word: str) -> str | None:
        """The alias ``word`` names (case and punctuation ignored) when it serves a class."""
        with self._lock:
            aliases = self.aliases()
            found = self._alias_index.get(norm(word))
        return found if found and aliases[found] else None

    def class_name(self, name: str) -> str:
        """A pipeline class name in the registry's spelling; ValueError with suggestions."""
        pipelines = self.pipelines()
        if name in pipelines:
            return name
        wanted = name.strip().lower()
        for known in pipelines:
            if known.lower() == wanted:
                return known
        raise ValueError(
            f"Unknown pipeline class '{name}'. "
            + suggest(name, list(pipelines), "pipelines", "get_available_pipelines")
        )

    # -- per-process caches of the resolvers ---------------------------------------------
    def model_id_class(self, model_id: str) -> str | None:
        """The class a model id resolved to earlier in this process, if any."""
        with self._lock:
            return self._model_ids.get(model_id)

    def remember_model_id(self, model_id: str, class_name: str) -> None:
        with self._lock:
            self._model_ids[model_id] = class_name

    def class_registry(self, key: tuple[str, bool]) -> dict[str, type] | None:
        """Classes discovered earlier for (base class name, include_base), if any."""
        with self._lock:
            return self._class_registries.get(key)

    def remember_class_registry(
        self, key: tuple[str, bool], found: dict[str, type]
    ) -> dict[str, type]:
        """Keep ``found`` (or the registry another thread kept first) and return it."""
        with self._lock:
            return self._class_registries.setdefault(key, found)


REGISTRY = PipelineRegistry()

"""The standalone API hosts use: load a pipeline by class, task or model id, describe a
pipeline, and discover other diffusers classes (schedulers, models) by base class.
"""

from __future__ import annotations

from typing import Any

from diffusers_backend.registry.resolution import resolve_pipeline_name
from diffusers_backend.registry.store import REGISTRY, suggest


class PipelineLoadError(RuntimeError):
    """Raised when a resolved pipeline class fails to load; names the class and the model."""

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
    cls = REGISTRY.pipelines()[name]
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
        name = REGISTRY.class_name(class_name)
    except ValueError:
        raise ValueError(
            f"Unknown pipeline '{class_name}'. "
            + suggest(class_name, list(REGISTRY.pipelines()), "pipelines",
                      "get_available_pipelines")
        ) from None
    record = REGISTRY.records()["pipelines"][name]
    cls = REGISTRY.pipelines()[name]
    doc = (cls.__doc__ or "").strip()
    return {
        "name": name,
        "aliases": [alias for alias, names in REGISTRY.aliases().items() if name in names],
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
    cached = REGISTRY.class_registry(key)
    if cached is not None:
        return cached
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
    return REGISTRY.remember_class_registry(key, found)


def get_available_classes(base_class_name: str) -> list[str]:
    """Sorted names from :func:`discover_diffusers_classes`."""
    return sorted(discover_diffusers_classes(base_class_name))

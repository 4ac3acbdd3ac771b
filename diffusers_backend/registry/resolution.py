"""From what a caller names (a class in any case, a task or family alias, or a model id) to
a pipeline class; and the closest names for a word that is neither class nor task.
"""

from __future__ import annotations

from diffusers_backend.registry.names import slug
from diffusers_backend.registry.sniffing import infer_pipeline_name_from_model_id
from diffusers_backend.registry.store import REGISTRY, LazyPipelineRegistry, closest, suggest


def get_pipeline_registry() -> LazyPipelineRegistry:
    """All pipeline classes (DiffusionPipeline subclasses + AutoPipelines), lazily imported.

    Cached: the same object on every call. Listing keys imports neither torch nor diffusers
    when the disk cache is warm.
    """
    return REGISTRY.pipelines()


def get_task_aliases() -> dict[str, list[str]]:
    """Alias -> pipeline class names, best first. Cached; imports nothing when cache is warm."""
    return REGISTRY.aliases()


def get_available_pipelines() -> list[str]:
    """Sorted pipeline class names."""
    return sorted(REGISTRY.pipelines())


def get_available_tasks() -> list[str]:
    """Sorted task/family aliases accepted by ``task=``."""
    return sorted(REGISTRY.aliases())


def lookup_task(task: str) -> str:
    """The best class for a task or family alias; ValueError with the closest aliases."""
    alias = REGISTRY.alias(task)
    if alias is not None:
        return REGISTRY.aliases()[alias][0]
    raise ValueError(
        f"Unknown task '{task}'. "
        + suggest(slug(task) or task, list(REGISTRY.aliases()), "tasks", "get_available_tasks")
    )


def closest_pipeline_names(word: str) -> list[str]:
    """Classes and tasks nearest to ``word``, closest first: the "did you mean" of a
    ``pipeline_type`` that is neither."""
    return closest(word, [*REGISTRY.pipelines(), *REGISTRY.aliases()])


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
        return REGISTRY.class_name(class_name)
    if task:
        return lookup_task(task)
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
    return REGISTRY.pipelines()[resolve_pipeline_name(class_name, task, model_id)]

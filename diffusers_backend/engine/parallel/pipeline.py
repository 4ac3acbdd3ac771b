"""The loaded pipeline, made to run its calls on the workers: the tasks see the same class
(name, call signature, components) and call it the same way, so they need no change."""

from __future__ import annotations

import functools
from typing import Any

from diffusers_backend.engine.parallel.group import WorkerGroup


def runs_on_workers(pipe: Any, group: WorkerGroup) -> Any:
    """``pipe`` (the server's CPU copy, kept for planning) with ``__call__`` sent to ``group``.

    A subclass of the pipeline's own class, of the same name, whose ``__call__`` wraps the
    original one (so ``inspect.signature`` reads the original parameters).
    """
    cls = type(pipe)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
        if args:
            raise TypeError(f"{cls.__name__} on context-parallel workers takes keyword "
                            f"arguments only")
        return group.call(kwargs)

    functools.update_wrapper(__call__, cls.__call__)
    parallel = type(cls.__name__, (cls,), {
        "__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
        "parallel_group": group})
    pipe.__class__ = parallel
    return pipe


def group_of(pipe: Any) -> WorkerGroup | None:
    """The worker group a pipeline runs on, or None for a pipeline in this process."""
    group = getattr(type(pipe), "parallel_group", None)
    return group if isinstance(group, WorkerGroup) else None

"""What flows through the engine: the plan protocol, the ticket that carries a plan to the
pipeline thread and its answer back, a request still being validated, and the plan made
again when another model was loaded while a request waited.

Its own module so that the executors (the engine's pipeline thread and the step-level loop)
and the scheduler can all name these types without importing each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from diffusers_backend.engine import progress, timings
from diffusers_backend.errors import BackendError, Cancelled
from diffusers_backend.tasks.calls import IsCancelled

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline


class Plan(Protocol):
    """A validated request, ready for the pipeline thread (image, video or upscale)."""

    @property
    def loaded(self) -> LoadedPipeline | None: ...

    @property
    def pixels(self) -> int: ...

    def batch_key(self) -> tuple[Any, ...] | None: ...

    def replan(self, loaded: LoadedPipeline) -> Plan: ...

    def write(self, output: Any) -> str: ...

    @staticmethod
    def run(batch: list[Any], variants: Any, is_cancelled: IsCancelled) -> list[Any]: ...


@dataclass(eq=False)
class Ticket:
    """One plan waiting for the pipeline thread, and its answer.

    ``replan`` plans the same request against another model (the runtime passes the
    dispatch it used at validation, so an image request can become a video plan); by
    default the plan's own ``replan``.
    """

    plan: Plan
    is_cancelled: IsCancelled
    record: timings.RequestTimings | None = None
    replan: Callable[[Any], Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: str = ""
    error: BaseException | None = None
    progress: progress.Track | None = None  # its live progress (engine/progress.py)

    def finish(self, result: str = "", error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        progress.HUB.finished(self.progress, result, error)  # every request ends here
        self.done.set()

    def wait(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Arrival:
    """A request being validated: counted so the pipeline thread knows companions are on
    their way (see :meth:`Engine.arriving`)."""

    def __init__(self) -> None:
        self.queued = False


def _model_name(loaded: Any) -> str:
    return str(getattr(loaded, "identity", "") or getattr(getattr(loaded, "spec", None),
                                                          "model", "") or "another model")


def replanned(ticket: Ticket, loaded: Any) -> Any:
    """The ticket's plan for ``loaded``: as validated, or planned again when another model was
    loaded while it waited; a refusal then names the model change, keeping its status."""
    plan = ticket.plan
    if plan.loaded is loaded:
        return plan
    replan = ticket.replan or plan.replan
    try:
        return replan(loaded)
    except BackendError as exc:
        raise type(exc)(f"the model changed to {_model_name(loaded)} while this request "
                        f"waited, and it cannot serve it: {exc}") from None


def waited_its_turn() -> Cancelled:
    """The answer to a request whose client left while it was queued."""
    return Cancelled("request cancelled by the client while it waited its turn")

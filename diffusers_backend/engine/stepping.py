"""The executor of a step-level batch: runs a denoising loop until it drains, as the
:class:`~diffusers_backend.engine.scheduler.Scheduler` says who joins it.

Every iteration: answer requests whose clients have gone, run one batched denoising step for
all active requests, decode each request whose own steps are done and hand its picture to a
writer, then let queued requests of the same key join (they are admitted: prompts encoded,
latents drawn). A step that runs out of memory shrinks the loop (the scheduler says to how
many); the requests it evicts go back to the head of the queue and start again, seeded as
before, so their pictures do not change.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from diffusers_backend.engine import progress, timings
from diffusers_backend.engine.block_checks import watching
from diffusers_backend.engine.clock import Clock
from diffusers_backend.engine.scheduler import Scheduler
from diffusers_backend.engine.tickets import Ticket, waited_its_turn
from diffusers_backend.errors import Cancelled, is_out_of_memory
from diffusers_backend.tasks import denoise
from diffusers_backend.tasks.denoise.slot import Slot
from diffusers_backend.tasks.lora_call import applied

if TYPE_CHECKING:
    from diffusers_backend.tasks.image import ImagePlan

log = logging.getLogger(__name__)


class LoopHost(Protocol):
    """What a loop needs from the executor that runs it (the engine)."""

    scheduler: Scheduler
    swap_waiting: bool  # a model swap waits: admit no one, so the loop drains
    clock: Clock  # a request's time in the loop (the auto batch window learns from it)

    @property
    def queue_lock(self) -> threading.Condition: ...

    def out_of_memory(self) -> None: ...

    def release_memory(self) -> None: ...

    def call_done(self, seconds: float) -> None: ...

    def finished(self, ticket: Ticket, plan: Any, output: Any) -> None: ...


@dataclass(eq=False)
class Member:
    """A request inside the loop, and what it shared."""

    ticket: Ticket
    plan: ImagePlan
    slot: Slot
    admitted_at: float
    shared_steps: int = 0  # steps whose denoiser call also served other requests
    largest_batch: int = 1


class StepLoop:
    """One running denoising loop (one model, one latent size)."""

    def __init__(self, host: LoopHost, loaded: Any, variants: Any,
                 key: tuple[Any, ...]) -> None:
        self.host, self.loaded, self.variants, self.key = host, loaded, variants, key
        self.scheduler = host.scheduler
        self.pipe = loaded.pipe
        self.active: list[Member] = []
        self.pixels = 0
        self.cap: int | None = None  # lowered after running out of memory
        self.served = 0  # requests whose pictures this loop made

    def run(self, first: Ticket, plan: ImagePlan) -> None:
        """Run until no request is left; an unexpected error fails every active request."""
        self.pixels = plan.pixels
        try:
            with applied(plan.loaded, plan.loras, plan.settings.safetensors_only):
                self._run(first, plan)
        finally:
            timings.loop_drained(type(self.pipe).__name__, self.served)

    def _run(self, first: Ticket, plan: ImagePlan) -> None:
        """The loop itself; its members share ``plan``'s LoRA set (the step key holds it)."""
        try:
            self._admit(first, plan)
            self._admit_joiners()
            while self.active:
                self._drop_cancelled()
                if not self.active:
                    break
                self._step()
                self._finish_done()
                self._admit_joiners()
        except BaseException as exc:
            for member in self.active:
                if not member.ticket.done.is_set():
                    member.ticket.finish(error=exc)
            raise

    # -- admission --------------------------------------------------------------------------
    def _admit(self, ticket: Ticket, plan: ImagePlan) -> None:
        try:
            slot = denoise.admit(plan, self.variants)
        except Exception as exc:  # noqa: BLE001 - this request's own error
            if is_out_of_memory(exc):  # its latents did not fit: free what the try left
                self.host.out_of_memory()
            ticket.finish(error=exc)
            return
        self.active.append(Member(ticket, plan, slot, self.host.clock.monotonic()))
        progress.HUB.started(ticket.progress, len(slot.timesteps))
        log.debug("denoising loop admitted seed=%s steps=%s (%d active)",
                  getattr(plan, "seed", "-"), getattr(plan, "steps", "-"), len(self.active))

    def _admit_joiners(self) -> None:
        if self.host.swap_waiting:  # let the loop drain so the model can change
            return
        with self.host.queue_lock:
            room = None if self.cap is None else self.cap - len(self.active)
            if room is not None and room <= 0:
                return
            joiners = self.scheduler.joiners(self.key, len(self.active), self.pixels)
            if room is not None and len(joiners) > room:
                self.scheduler.requeue_first(joiners[room:])
                joiners = joiners[:room]
        for ticket in joiners:
            timings.dequeued(ticket.record)
            if ticket.is_cancelled():
                ticket.finish(error=waited_its_turn())
                continue
            # a joiner shares the loop's step key, which only image plans have
            self._admit(ticket, cast("ImagePlan", ticket.plan))

    # -- steps ------------------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for member in [m for m in self.active if m.ticket.is_cancelled()]:
            self.active.remove(member)
            member.ticket.finish(error=Cancelled(
                f"request cancelled by the client at step {member.slot.index + 1}"))

    def _step(self) -> None:
        slots = [m.slot for m in self.active]
        started = timings.now()
        members = list(self.active)
        try:  # the shared step stops inside only once every member is cancelled
            with watching(lambda: all(m.ticket.is_cancelled() for m in members)):
                denoise.step_together(self.pipe, slots)
        except Exception as exc:  # noqa: BLE001 - handed to the requests' threads
            self._step_failed(exc)
            return
        seconds = timings.now() - started
        timings.step_ran(type(self.pipe).__name__, len(slots), seconds)
        for member in self.active:
            member.largest_batch = max(member.largest_batch, len(slots))
            if len(slots) > 1:
                member.shared_steps += 1
            # its row: the predicted clean image where the scheduler gives one
            shown = member.slot.latents if member.slot.clean is None else member.slot.clean
            latents = shown[0] if progress.HUB.watchers else None
            progress.HUB.step(member.ticket.progress, member.slot.index,
                              len(member.slot.timesteps), self.pipe, latents)

    def _step_failed(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):  # every member gone: what the step held goes back
            exc.with_traceback(None)  # its frames hold the step's tensors
            self.host.release_memory()
        if not is_out_of_memory(exc):
            for member in self.active:
                member.ticket.finish(error=exc)
            self.active = []
            return
        self.host.out_of_memory()
        keep = self.scheduler.out_of_memory(len(self.active), self.pixels)
        if keep == 0:
            for member in self.active:
                member.ticket.finish(error=exc)
            self.active = []
            return
        self.cap = keep
        evicted, self.active = self.active[keep:], self.active[:keep]
        log.warning("a denoising step of %d requests ran out of memory; going on with %d, "
                    "the others start again", keep + len(evicted), keep)
        with self.host.queue_lock:
            self.scheduler.requeue_first([m.ticket for m in evicted])
        for member in evicted:
            timings.queued(member.ticket.record)

    def _finish_done(self) -> None:
        for member in [m for m in self.active if m.slot.done]:
            self.active.remove(member)
            try:
                with watching(member.ticket.is_cancelled):
                    picture = denoise.decode(self.pipe, member.slot)
            except Exception as exc:  # noqa: BLE001 - this request's own error
                member.ticket.finish(error=exc)
                continue
            seconds = self.host.clock.monotonic() - member.admitted_at
            self.host.call_done(seconds)
            timings.stepped_request_ran(
                member.ticket.record, seed=member.plan.seed,
                steps=getattr(picture, "steps", None) or member.plan.steps,
                pipeline=type(self.pipe).__name__, seconds=seconds,
                batch=member.largest_batch, shared_steps=member.shared_steps)
            self.served += 1
            self.host.finished(member.ticket, member.plan, picture)

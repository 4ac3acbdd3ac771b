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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffusers_backend.engine import progress, timings
from diffusers_backend.errors import Cancelled, is_out_of_memory
from diffusers_backend.tasks import denoise
from diffusers_backend.tasks.denoise.slot import Slot

if TYPE_CHECKING:
    from diffusers_backend.engine.engine import Engine, Ticket
    from diffusers_backend.tasks.image import ImagePlan

log = logging.getLogger(__name__)


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

    def __init__(self, engine: Engine, loaded: Any, variants: Any, key: tuple[Any, ...]) -> None:
        self.engine, self.loaded, self.variants, self.key = engine, loaded, variants, key
        self.scheduler = engine.scheduler
        self.pipe = loaded.pipe
        self.active: list[Member] = []
        self.pixels = 0
        self.cap: int | None = None  # lowered after running out of memory
        self.served = 0  # requests whose pictures this loop made
        self.hand_off = engine.hand_to_writer  # (ticket, plan, picture) -> a writer thread

    def run(self, first: Ticket, plan: ImagePlan) -> None:
        """Run until no request is left; an unexpected error fails every active request."""
        self.pixels = plan.pixels
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
        finally:
            timings.loop_drained(type(self.pipe).__name__, self.served)

    # -- admission --------------------------------------------------------------------------
    def _admit(self, ticket: Ticket, plan: ImagePlan) -> None:
        try:
            slot = denoise.admit(plan, self.variants)
        except Exception as exc:  # noqa: BLE001 - this request's own error
            if is_out_of_memory(exc):  # its latents did not fit: free what the try left
                self._free_after_out_of_memory()
            ticket.finish(error=exc)
            return
        self.active.append(Member(ticket, plan, slot, timings.now()))
        progress.HUB.started(ticket.progress, len(slot.timesteps))
        log.debug("denoising loop admitted seed=%s steps=%s (%d active)",
                  getattr(plan, "seed", "-"), getattr(plan, "steps", "-"), len(self.active))

    def _admit_joiners(self) -> None:
        if self.engine.swap_waiting:  # let the loop drain so the model can change
            return
        with self.engine._cv:
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
                ticket.finish(error=Cancelled("request cancelled by the client while it "
                                              "waited its turn"))
                continue
            self._admit(ticket, ticket.plan)

    # -- steps ------------------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for member in [m for m in self.active if m.ticket.is_cancelled()]:
            self.active.remove(member)
            member.ticket.finish(error=Cancelled(
                f"request cancelled by the client at step {member.slot.index + 1}"))

    def _step(self) -> None:
        slots = [m.slot for m in self.active]
        started = timings.now()
        try:
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
            latents = member.slot.latents[0] if progress.HUB.watchers else None  # its row
            progress.HUB.step(member.ticket.progress, member.slot.index,
                              len(member.slot.timesteps), self.pipe, latents)

    def _free_after_out_of_memory(self) -> None:
        log.warning("out of memory; freeing cached memory before the next request")
        self.engine._release_memory()

    def _step_failed(self, exc: Exception) -> None:
        if not is_out_of_memory(exc):
            for member in self.active:
                member.ticket.finish(error=exc)
            self.active = []
            return
        self._free_after_out_of_memory()
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
        with self.engine._cv:
            self.scheduler.requeue_first([m.ticket for m in evicted])
        for member in evicted:
            timings.queued(member.ticket.record)

    def _finish_done(self) -> None:
        for member in [m for m in self.active if m.slot.done]:
            self.active.remove(member)
            try:
                picture = denoise.decode(self.pipe, member.slot)
            except Exception as exc:  # noqa: BLE001 - this request's own error
                member.ticket.finish(error=exc)
                continue
            seconds = timings.now() - member.admitted_at
            self.scheduler.call_ran(seconds)
            self.engine._used_since_release = True
            timings.stepped_request_ran(
                member.ticket.record, seed=member.plan.seed,
                steps=getattr(picture, "steps", None) or member.plan.steps,
                pipeline=type(self.pipe).__name__, seconds=seconds,
                batch=member.largest_batch, shared_steps=member.shared_steps)
            self.served += 1
            self.hand_off(member.ticket, member.plan, picture)

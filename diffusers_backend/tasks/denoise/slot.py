"""One request inside a denoising loop the engine owns, what a family's loop is
(:class:`DenoiseLoop`), and what every family's loop shares: classifier-free guidance and the
scheduler step on the request's own slice of a batched denoiser output."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol


class DenoiseLoop(Protocol):
    """A family's denoising loop, taken apart so requests can share steps: a module with
    these names (``unet``, ``sd3``) satisfies it; ``denoise.LOOPS`` lists them."""

    KEYS: frozenset[str]  # the pipeline call options the loop honours

    def serves(self, pipe: Any) -> bool: ...

    def admit(self, pipe: Any, call: dict[str, Any]) -> Slot: ...

    def step(self, pipe: Any, slots: list[Slot]) -> None: ...

    def decode(self, pipe: Any, slot: Slot) -> Any: ...


@dataclass(eq=False)
class Slot:
    """A request's own denoising state: its scheduler copy (timesteps, step index, sigmas),
    latents, prompt conditioning (one row per denoiser input row, unconditional first),
    guidance scale and generator; ``index`` is the next step."""

    scheduler: Any
    timesteps: list
    latents: Any
    rows: dict[str, Any]
    guidance: float
    cfg: bool
    generator: Any
    extra_step: dict = field(default_factory=dict)
    index: int = 0
    loop: DenoiseLoop | None = None  # the family's loop, set by admission
    facts: Any = None  # the plan's CallFacts (tasks/image.py), set by admission
    # The scheduler's predicted clean latents after the last step (``pred_original_sample``:
    # DDIM, Euler...), or None when its step gives none; live previews show them.
    clean: Any = None

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    @property
    def row_count(self) -> int:
        return 2 if self.cfg else 1

    def timestep(self) -> Any:
        return self.timesteps[self.index]


@contextmanager
def scheduler_in_place(pipe: Any, scheduler: Any) -> Iterator[None]:
    """Let pipeline helpers that read ``pipe.scheduler`` (latent noise scale, step kwargs)
    see one request's scheduler; only the pipeline thread touches the pipeline."""
    saved = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = saved


def set_timesteps(pipe: Any, scheduler: Any, steps: int, device: Any, **kwargs: Any) -> list:
    """The request's timesteps, set on its own scheduler by the pipeline module's own
    ``retrieve_timesteps`` (so custom sigmas and offsets match the pipeline call)."""
    module = inspect.getmodule(type(pipe))
    assert module is not None  # a pipeline class always has its module
    retrieve = module.retrieve_timesteps
    timesteps, _ = retrieve(scheduler, steps, device, **kwargs)
    return list(timesteps)


def guide_and_step(slots: list[Slot], output: Any) -> None:
    """Split a batched denoiser output by request: CFG with the request's own scale, then
    one step of the request's own scheduler on its own latents."""
    at = 0
    for slot in slots:
        pred = output[at:at + slot.row_count]
        at += slot.row_count
        if slot.cfg:
            uncond, text = pred.chunk(2)
            pred = uncond + slot.guidance * (text - uncond)
        out = slot.scheduler.step(pred, slot.timestep(), slot.latents, **slot.extra_step)
        slot.latents = out[0]  # prev_sample, the output's first field
        slot.clean = getattr(out, "pred_original_sample", None)
        slot.index += 1


def stacked_rows(slots: list[Slot]) -> dict[str, Any]:
    """Every request's conditioning rows, stacked in slot order."""
    import torch

    if len(slots) == 1:  # a lone request: its own rows, no copy
        return dict(slots[0].rows)
    return {key: torch.cat([slot.rows[key] for slot in slots]) for key in slots[0].rows}


def stacked(tensors: list) -> Any:
    """``torch.cat`` that does not copy a single tensor."""
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

"""DeepCache-style feature reuse for Stable Diffusion / SDXL UNets (``cache:deepcache``).

Between close denoising steps a UNet's deep (low-resolution) features barely change, so at
every step but one in ``interval`` only the shallowest path runs (``conv_in``, the last
layer of the last up block, ``conv_out``) and every deeper block returns what it returned at
the last full step (Ma et al., "DeepCache", arXiv 2312.00858).

Why not the ``deepcache`` package: its 0.1.1 (2023) monkey-patches ``forward`` and keeps its
step counter and cached features across pipeline calls, so a call that starts at another
step (img2img with another strength) may reuse the previous request's features. Here the
hooks go through diffusers' own hook registry, and a new call is recognised by the
scheduler's fresh ``timesteps`` tensor (every pipeline call runs ``set_timesteps``), so each
generation starts with a full step and its own features.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

HOOK_NAME = "backend_unet_block_cache"


class ReuseSchedule:
    """Which step of the current generation this is, and whether the deep blocks run."""

    def __init__(self, pipe: Any, interval: int) -> None:
        self._pipe = pipe  # its scheduler is read at each step: a later swap is seen
        self.interval = interval
        self._timesteps: Any = None
        self._step = 0
        self.full = True
        self.reused_steps = 0  # steps that reused the deep features, for logs and tests
        self.full_steps = 0

    def start_step(self) -> None:
        current = getattr(getattr(self._pipe, "scheduler", None), "timesteps", None)
        if current is not self._timesteps:  # set_timesteps ran: a new generation
            self._timesteps = current
            self._step = 0
        self.full = self._step % self.interval == 0
        self._step += 1
        if self.full:
            self.full_steps += 1
        else:
            self.reused_steps += 1


def _hook_classes() -> tuple[type, type]:
    from diffusers.hooks import ModelHook

    class StepHook(ModelHook):
        """On the UNet itself: tell the schedule a step starts."""

        def __init__(self, schedule: ReuseSchedule) -> None:
            super().__init__()
            self.schedule = schedule

        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            self.schedule.start_step()
            return args, kwargs

    class ReuseHook(ModelHook):
        """On a deep block: run it at full steps, return its last output otherwise."""

        def __init__(self, schedule: ReuseSchedule) -> None:
            super().__init__()
            self.schedule = schedule
            self.output: Any = None

        def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
            if self.schedule.full or self.output is None:
                self.output = self.fn_ref.original_forward(*args, **kwargs)
            return self.output

    return StepHook, ReuseHook


def deep_modules(unet: Any) -> Iterator[Any]:
    """Every block whose output is reused: all but the last layer of the last up block."""
    yield from unet.down_blocks
    yield unet.mid_block
    yield from list(unet.up_blocks)[:-1]
    last = unet.up_blocks[-1]
    yield from list(last.resnets)[:-1]
    attentions = getattr(last, "attentions", None)
    if attentions is not None:
        yield from list(attentions)[:-1]


def supports(unet: Any) -> bool:
    """A UNet with down/mid/up blocks (UNet2DConditionModel and its relatives)."""
    return all(getattr(unet, name, None) is not None
               for name in ("down_blocks", "mid_block", "up_blocks"))


def apply(pipe: Any, interval: int) -> ReuseSchedule:
    """Hook ``pipe.unet`` so deep features are recomputed every ``interval`` steps only."""
    from diffusers.hooks import HookRegistry

    unet = pipe.unet
    step_hook, reuse_hook = _hook_classes()
    schedule = ReuseSchedule(pipe, interval)
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(step_hook(schedule),
                                                                   HOOK_NAME)
    for module in deep_modules(unet):
        HookRegistry.check_if_exists_or_initialize(module).register_hook(reuse_hook(schedule),
                                                                         HOOK_NAME)
    unet._backend_reuse_schedule = schedule  # noqa: SLF001 - found again by schedule_of()
    return schedule


def schedule_of(unet: Any) -> ReuseSchedule | None:
    """The schedule :func:`apply` installed on ``unet``, if any."""
    return getattr(unet, "_backend_reuse_schedule", None)


"""The head of every pipeline call, written once for the image, video and upscale tasks.

It holds the call's signature, the model's defaults, steps, the seeded generator, the size,
and at the end the filter to what the call accepts plus the cancel callback.

Each task adds its own keyword arguments between :meth:`CallHeader.defaults` (which they
override) and :meth:`CallHeader.finish`; what :meth:`CallHeader.noise` sets (steps,
generator, size) comes from the validated plan and wins over the model's options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffusers_backend.registry.signatures import CallSignature, call_signature
from diffusers_backend.tasks.calls import (
    IsCancelled,
    accepted_kwargs,
    cancel_callback,
    make_generator,
    model_defaults,
    size_kwargs,
)

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline


@dataclass(frozen=True)
class CallHeader:
    """One pipeline and the signature of its ``__call__`` (looked up once per class)."""

    pipe: Any
    sig: CallSignature

    @classmethod
    def of(cls, pipe: Any) -> CallHeader:
        return cls(pipe, call_signature(type(pipe)))

    def accepts(self, key: str) -> bool:
        return self.sig.accepts(key)

    def defaults(self, loaded: LoadedPipeline) -> dict[str, Any]:
        """The model's load-time cfg scale and call options this call accepts: the base
        the task's own keyword arguments go on."""
        return model_defaults(loaded, self.sig)

    def noise(self, seed: int, steps: int | None = None, width: int = 0,
              height: int = 0) -> dict[str, Any]:
        """The plan's steps (None: the pipeline's or the options'), a CPU generator seeded
        with ``seed``, and the width/height the plan sets (0: the model's default)."""
        out: dict[str, Any] = {}
        if steps is not None:
            out["num_inference_steps"] = steps
        out["generator"] = make_generator(seed)
        out.update(size_kwargs(width, height))
        return out

    def accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments this call takes (``calls.accepted_kwargs``)."""
        return accepted_kwargs(kwargs, self.sig)

    def cancellable(self, call: dict[str, Any], is_cancelled: IsCancelled) -> dict[str, Any]:
        """``call`` with the step callback that stops it once the client has gone, where the
        pipeline takes one (``calls.cancel_callback``)."""
        if self.sig.accepts("callback_on_step_end"):
            call["callback_on_step_end"] = cancel_callback(is_cancelled)
        return call

    def finish(self, kwargs: dict[str, Any], is_cancelled: IsCancelled) -> dict[str, Any]:
        """The call itself: what it accepts of ``kwargs``, and the cancel callback."""
        return self.cancellable(self.accepted(kwargs), is_cancelled)

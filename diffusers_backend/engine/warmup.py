"""A small denoising call after each load, so admission has a measured rate before the
first request (``DIFFUSERS_WARMUP``).

Text-to-image pipelines only (one that needs an input picture, or makes video, is measured
by its first request). Two calls of one step each (the first pays one-time set-up costs),
at half the native side, before the model is swapped in: no request waits on them. A
failure is logged and forgotten: the model still serves, admission just has no rate yet.
"""

from __future__ import annotations

import logging
from typing import Any

from diffusers_backend.engine import timings
from diffusers_backend.engine.admission import costs_of

log = logging.getLogger(__name__)
WARMUP_CALLS = 2


def warm_up(loaded: Any) -> None:
    """Run one small step (and decode) of ``loaded``'s pipeline; its cost is recorded by
    the block hooks (``block_checks.install`` must have run)."""
    from diffusers_backend.registry.signatures import call_signature
    from diffusers_backend.tasks.calls import make_generator, size_multiple
    from diffusers_backend.tasks.side_limit import native_side
    from diffusers_backend.tasks.video import makes_video

    pipe = loaded.pipe
    sig = call_signature(type(pipe))
    if makes_video(pipe) or sig.required_image or not sig.accepts("prompt"):
        return
    multiple = size_multiple(pipe)
    side = max(multiple, native_side(pipe) // 2 // multiple * multiple)
    call: dict[str, Any] = {"prompt": "", "num_inference_steps": 1,
                            "generator": make_generator(0)}
    for key, value in (("width", side), ("height", side)):
        if sig.accepts(key):
            call[key] = value
    started = timings.now()
    try:
        import torch

        # no_grad, as requests run (pipelines' own decorator, the step loop): under
        # inference_mode a compiled denoiser would meet other tensors and recompile later
        with torch.no_grad():
            for _ in range(WARMUP_CALLS):  # the first pays one-time set-up costs
                pipe(**call)
    except Exception as exc:  # noqa: BLE001 - a warm-up never fails a load
        log.info("warm-up step of %s skipped: %s", type(pipe).__name__, exc)
        return
    costs_of(pipe).warmed_up()
    log.debug("warm-up step at %dx%d in %.2fs", side, side, timings.now() - started)

"""Cancellation inside a step, and the denoiser's measured cost per latent token.

Between steps the pipeline's callback already stops a cancelled request; one step of a huge
picture, or its VAE decode, can still run for minutes. So at load, forward pre-hooks go on
the blocks of the denoiser (UNet down/mid/up blocks and the resnets and attentions in them,
transformer blocks) and of the VAE decoder. Each checks the probe of the call running on
this thread (set by the engine around a pipeline call or a shared step, :func:`watching`)
and raises :class:`Cancelled`, which the engine already answers. With no probe set
(warm-up, benchmarks, other threads) a hook returns at once. A hook pair on the denoiser
and the decoder themselves times each call and records it in the model's
:class:`~diffusers_backend.engine.admission.CostBook`, from which admission estimates what a
request will take.

Compiled blocks get no hook (a Python check inside a compiled graph would break it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from diffusers_backend.engine import timings
from diffusers_backend.engine.admission import CostBook, costs_of, decoder_units, denoiser_units
from diffusers_backend.errors import Cancelled
from diffusers_backend.tasks.calls import IsCancelled

log = logging.getLogger(__name__)
DENOISERS = ("unet", "transformer", "transformer_2", "prior")
SMALL = frozenset({"to_out", "net", "norms", "proj_out_list"})  # lists inside one layer
_MARK = "_diffusers_backend_block_checks"
_local = threading.local()


@contextmanager
def watching(is_cancelled: IsCancelled) -> Iterator[None]:
    """While the body runs on this thread, every hooked block first asks ``is_cancelled``."""
    previous = getattr(_local, "probe", None)
    _local.probe = is_cancelled
    try:
        yield
    finally:
        _local.probe = previous


def _check(_module: Any, _args: Any) -> None:
    probe = getattr(_local, "probe", None)
    if probe is not None and probe():
        raise Cancelled("request cancelled by the client (stopped inside a step)")


def _compiled(module: Any) -> bool:
    return (getattr(module, "_compiled_call_impl", None) is not None
            or hasattr(module, "_orig_mod"))


def checked_blocks(model: Any) -> list[Any]:
    """The modules a check goes before: every member of every block list in the model (the
    UNet's down/up blocks and, inside them, their resnets, attentions and transformer
    blocks; a transformer's blocks), and its mid block. A layer's own small lists
    (``to_out``, a feed-forward's ``net``) are left alone."""
    import torch

    found: list[Any] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] not in SMALL:
            found.extend(module)
    mid = getattr(model, "mid_block", None)
    if mid is not None:
        found.append(mid)
    return found


def _hook_blocks(model: Any) -> int:
    hooked = 0
    for block in checked_blocks(model):
        if not _compiled(block):
            block.register_forward_pre_hook(_check)
            hooked += 1
    return hooked


def _timer(book: CostBook, kind: str, units: Callable[[Any], float]) -> tuple[Any, Any]:
    """A pre-hook/hook pair that times each call of a model and records its cost units."""
    started: list[tuple[float, float]] = []  # one slot: a model's calls do not nest

    def before(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else next(
            (v for k, v in kwargs.items() if k in {"sample", "hidden_states", "z"}), None)
        shape = tuple(getattr(sample, "shape", ()) or ())
        started[:] = [(timings.now(), units(shape))]

    def after(_module: Any, _args: Any, _kwargs: dict[str, Any], _output: Any) -> None:
        if started:
            began, amount = started.pop()
            if amount > 0:
                book.record(kind, amount, timings.now() - began)

    return before, after


def install(pipe: Any) -> CostBook:
    """Hook the loaded pipeline's denoiser and VAE decoder once; its cost book."""
    book = costs_of(pipe)
    for name in DENOISERS:
        model = getattr(pipe, name, None)
        if model is None or getattr(model, _MARK, False) or not hasattr(model, "modules"):
            continue
        hooked = _hook_blocks(model)
        if not _compiled(model):
            before, after = _timer(book, "denoiser", denoiser_units(model))
            model.register_forward_pre_hook(before, with_kwargs=True)
            model.register_forward_hook(after, with_kwargs=True)
        object.__setattr__(model, _MARK, True)
        log.debug("cancellation checks before %d blocks of %s", hooked, name)
    vae = getattr(pipe, "vae", None)
    decoder = getattr(vae, "decoder", None)
    if decoder is not None and hasattr(decoder, "modules") and not getattr(decoder, _MARK, False):
        _hook_blocks(decoder)
        if not _compiled(decoder):
            before, after = _timer(book, "decoder", decoder_units(vae))
            decoder.register_forward_pre_hook(before, with_kwargs=True)
            decoder.register_forward_hook(after, with_kwargs=True)
        object.__setattr__(decoder, _MARK, True)
    return book

"""Live progress of generation requests: the in-process hub the Progress service, the live
page and the client's progress bar read from.

The engine reports each request's life here (queued, started, each denoising step, and its
end: done, failed or cancelled, from :meth:`Engine.Ticket.finish`, the one place every
request ends). Watchers subscribe with an optional ``dst`` filter; each has a bounded queue
that drops its oldest events, so a watcher that never reads costs memory for a few events
and never slows the pipeline thread. With nobody watching a step costs one attribute write
and one truth test; previews are made only when a watcher asked for them, at most once per
step whatever the number of watchers. No third-party imports at module level: the engine
uses it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from diffusers_backend.engine.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)
QUEUED, STARTED, STEP, DONE, FAILED, CANCELLED = (
    "queued", "started", "step", "done", "failed", "cancelled")
ENDS = frozenset({DONE, FAILED, CANCELLED})
WATCHER_QUEUE = 256  # events a watcher may fall behind by before its oldest are dropped
DEFAULT_PREVIEW_EVERY = 1
_F = TypeVar("_F", bound=Callable[..., Any])


def _never_raises(method: _F) -> _F:
    """Reporting progress must never fail (or hang) a request: an error here is logged."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception:  # noqa: BLE001 - logged; the request goes on
            log.warning("progress report failed", exc_info=True)
            return None

    return guarded  # type: ignore[return-value]


@dataclass(frozen=True)
class Event:
    """One thing that happened to one request (the fields of ``ProgressEvent``)."""

    request_id: str
    dst: str
    stage: str
    kind: str = ""
    step: int = 0
    steps: int = 0
    elapsed_s: float = 0.0
    eta_s: float = 0.0
    queue_position: int = 0
    preview_png: bytes = b""
    message: str = ""

    def as_dict(self, previews: bool = False) -> dict[str, Any]:
        """The event as JSON-able fields (the preview base64-encoded when kept)."""
        import base64

        fields = {k: v for k, v in self.__dict__.items() if k != "preview_png"}
        if previews and self.preview_png:
            fields["preview_png"] = base64.b64encode(self.preview_png).decode()
        return fields


@dataclass(eq=False)
class Track:
    """One request's progress, owned by the hub (the ticket carries it)."""

    request_id: str
    dst: str
    kind: str
    steps: int
    width: int = 0
    height: int = 0
    preview_every: int = DEFAULT_PREVIEW_EVERY
    queued_at: float = field(default_factory=SYSTEM_CLOCK.monotonic)
    started_at: float | None = None
    step: int = 0
    ended: bool = False
    last: Event | None = None  # the latest event (the live page's starting state)
    preview: bytes = b""  # the latest preview made for it
    decoder: Any = None  # the model's preview_decoder (an AutoencoderTiny), if it has one
    clock: Clock = SYSTEM_CLOCK  # the hub's: elapsed and ETA

    def event(self, stage: str, **values: Any) -> Event:
        now = self.clock.monotonic()
        return Event(self.request_id, self.dst, stage, self.kind, steps=self.steps,
                     elapsed_s=round(now - self.queued_at, 3), **values)


class Watcher:
    """One subscriber: a filter and a bounded queue of events (oldest dropped when full)."""

    def __init__(self, dst: str = "", previews: bool = False,
                 maxlen: int = WATCHER_QUEUE) -> None:
        self.dst = dst
        self.previews = previews
        self.dropped = 0
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._ready = threading.Condition()
        self.closed = False

    def wants(self, dst: str) -> bool:
        return not self.dst or self.dst == dst

    def put(self, event: Event) -> None:
        with self._ready:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)
            self._ready.notify()

    def get(self, timeout: float) -> Event | None:
        """The next event, or None after ``timeout`` seconds (or once closed)."""
        with self._ready:
            if not self._events and not self.closed:
                self._ready.wait(timeout)
            return self._events.popleft() if self._events else None

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()


class Hub:
    """Where requests report and watchers listen (one per process: :data:`HUB`)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock  # elapsed and ETA (engine/clock.py)
        self._lock = threading.Lock()
        self.watchers: tuple[Watcher, ...] = ()  # replaced, never mutated: read without lock
        self._tracks: dict[str, Track] = {}  # requests not ended yet, oldest first
        self._ids = itertools.count(1)

    # -- watchers ---------------------------------------------------------------------------
    def watch(self, dst: str = "", previews: bool = False,
              maxlen: int = WATCHER_QUEUE) -> Watcher:
        watcher = Watcher(dst, previews, maxlen)
        with self._lock:
            self.watchers = (*self.watchers, watcher)
        return watcher

    def close(self) -> None:
        """End every watcher's stream (the server is shutting down)."""
        for watcher in self.watchers:
            watcher.close()

    def unwatch(self, watcher: Watcher) -> None:
        watcher.close()
        with self._lock:
            self.watchers = tuple(w for w in self.watchers if w is not watcher)

    def snapshot(self) -> list[Event]:
        """The latest event of every request not ended yet (queued first, then running)."""
        with self._lock:
            return [t.last for t in self._tracks.values() if t.last is not None]

    def _publish(self, track: Track, event: Event) -> None:
        track.last = event
        for watcher in self.watchers:
            if watcher.wants(track.dst):
                if event.preview_png and not watcher.previews:
                    watcher.put(replace(event, preview_png=b""))
                else:
                    watcher.put(event)

    # -- requests (engine side) ---------------------------------------------------------------
    @_never_raises
    def queued(self, plan: Any) -> Track | None:
        """A validated request joined the pipeline queue."""
        job = getattr(plan, "job", None)
        loaded = getattr(plan, "loaded", None)
        options = getattr(getattr(loaded, "spec", None), "options", None) or {}
        every = options.get("preview_every", DEFAULT_PREVIEW_EVERY)
        track = Track(f"r{next(self._ids)}", str(getattr(job, "dst", "") or ""),
                      _kind(plan), int(getattr(plan, "steps", 0) or 0),
                      int(getattr(plan, "width", 0) or 0), int(getattr(plan, "height", 0) or 0),
                      preview_every=max(1, int(every)) if isinstance(every, int) else 1,
                      decoder=getattr(loaded, "preview_decoder", None),
                      queued_at=self.clock.monotonic(), clock=self.clock)
        with self._lock:
            self._tracks[track.request_id] = track
            position = sum(1 for t in self._tracks.values() if t.started_at is None)
        self._publish(track, track.event(QUEUED, queue_position=position))
        return track

    @_never_raises
    def started(self, track: Track | None, steps: int = 0) -> None:
        """The pipeline thread began running the request."""
        if track is None or track.started_at is not None or track.ended:
            return
        track.started_at = self.clock.monotonic()
        if steps:
            track.steps = steps
        self._publish(track, track.event(STARTED))

    @_never_raises
    def step(self, track: Track | None, step: int, steps: int, pipe: Any = None,
             latents: Any = None) -> None:
        """The request finished denoising step ``step`` of ``steps`` (1-based)."""
        if track is None:
            return
        track.step = step
        if not self.watchers or track.ended:
            return  # nobody watches: nothing more to do
        if track.started_at is None:
            self.started(track)
        track.steps = steps or track.steps
        assert track.started_at is not None
        spent = self.clock.monotonic() - track.started_at
        eta = spent / step * (track.steps - step) if step > 0 and track.steps >= step else 0.0
        png = b""
        if latents is not None and pipe is not None and self._preview_due(track, step):
            png = self._preview(track, pipe, latents)
        self._publish(track, track.event(STEP, step=step, eta_s=round(eta, 3),
                                         preview_png=png))

    def _preview_due(self, track: Track, step: int) -> bool:
        if step % track.preview_every and step != track.steps:
            return False
        return any(w.previews and w.wants(track.dst) for w in self.watchers)

    def _preview(self, track: Track, pipe: Any, latents: Any) -> bytes:
        from diffusers_backend.engine.previews import preview_png

        try:
            png = preview_png(pipe, latents, track.width, track.height,
                              track.decoder) or b""
        except Exception:  # noqa: BLE001 - a preview never fails a request
            log.debug("preview failed", exc_info=True)
            return b""
        track.preview = png
        return png

    @_never_raises
    def finished(self, track: Track | None, message: str = "",
                 error: BaseException | None = None) -> None:
        """The request ended: done (its reply), cancelled or failed (its error)."""
        if track is None or track.ended:
            return
        track.ended = True
        with self._lock:
            self._tracks.pop(track.request_id, None)
        if error is None:
            stage, text = DONE, message
        else:
            from diffusers_backend.errors import Cancelled, short_message

            stage = CANCELLED if isinstance(error, Cancelled) else FAILED
            text = short_message(error) if isinstance(error, Exception) else str(error)
        step = track.steps if stage == DONE else track.step
        self._publish(track, track.event(stage, step=step, message=text))


def _kind(plan: Any) -> str:
    name = type(plan).__name__.lower()
    for kind in ("video", "upscale", "image"):
        if kind in name:
            return kind
    return name.removesuffix("plan")


HUB = Hub()


# -- the hooks the pipeline thread calls ------------------------------------------------------
_current = threading.local()


def running(tracks: list[Track | None]) -> None:
    """The pipeline call about to run serves these requests, in batch order (each one's
    ``callback_on_step_end`` reports go to them); [] once it is over."""
    _current.tracks = tracks


@_never_raises
def call_step(pipe: Any, step_index: int, callback_kwargs: dict[str, Any]) -> None:
    """From a pipeline's ``callback_on_step_end``: step ``step_index`` (0-based) is done for
    every request of the running call; each gets its own row of the latents."""
    tracks: list[Track | None] = getattr(_current, "tracks", None) or []
    if not tracks:
        return
    steps = int(getattr(pipe, "_num_timesteps", 0) or 0)
    if not HUB.watchers:
        for track in tracks:
            if track is not None:
                track.step = step_index + 1
        return
    latents = callback_kwargs.get("latents")
    for row, track in enumerate(tracks):
        mine = None
        if latents is not None and getattr(latents, "ndim", 0) >= 3 and row < len(latents):
            mine = latents[row]
        HUB.step(track, step_index + 1, steps, pipe, mine)


def _install() -> None:
    from diffusers_backend.tasks import calls

    calls.step_reporter = call_step  # every pipeline call's step callback reports here


_install()

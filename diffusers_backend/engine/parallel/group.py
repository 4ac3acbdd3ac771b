"""The server's side of the context-parallel workers: start them, send each call to every
rank, take rank 0's output, and notice a dead rank at once (its process sentinel), so the
request in flight fails in well under a second instead of hanging."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from diffusers_backend.engine.parallel.modes import Choice
from diffusers_backend.engine.parallel.worker import WorkerArgs, main
from diffusers_backend.errors import BackendError, Cancelled, FailedPrecondition, LoadError

log = logging.getLogger(__name__)
POLL_S = 0.2
STOP_GRACE_S = 5.0
STRAGGLER_GRACE_S = 5.0
_live: weakref.WeakSet[WorkerGroup] = weakref.WeakSet()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gpu_ids(count: int) -> list[str]:
    """The CUDA device ids of the first ``count`` GPUs this process may use."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible else []
    return ids[:count] if ids else [str(rank) for rank in range(count)]


def _context(device: str) -> Any:
    """On a CPU, workers start from a fork server that imported torch and diffusers once: a
    fresh, single-threaded process (safe to fork, unlike the gRPC server), so a reload after
    a crash does not pay those imports again (~20 s on a busy CPU). With CUDA they are
    spawned: importing diffusers may touch the CUDA driver, which a fork must not inherit,
    and each worker sets CUDA_VISIBLE_DEVICES before torch first looks at the GPUs."""
    if device == "cuda":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "diffusers", "transformers",
                                    "diffusers_backend.engine.parallel.worker"])
    return context


class WorkerGroup:
    """N worker processes holding one model; one call at a time on all of them."""

    def __init__(self, choice: Choice, spec: Any, settings: Any, device: str):
        self.choice = choice
        self._spec, self._settings, self._device = spec, settings, device
        self._lock = threading.Lock()
        self._context = _context(device)
        self._cancel: Any = None  # made in start(): a shared flag may start a helper process
        self._processes: list[Any] = []
        self._conns: list[Connection] = []
        self.broken = ""  # why the group can no longer serve; "" while it can

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Spawn the ranks; they load while the caller does other work (see wait_ready)."""
        size = self.choice.world_size
        self._cancel = self._context.Value("b", 0)
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        gpus: list[str | None] = (list(_gpu_ids(size)) if self._device == "cuda"
                                  else [None] * size)
        threads = self._spec.threads or max(1, (os.cpu_count() or 1) // size)
        _live.add(self)
        for rank in range(size):
            ours, theirs = self._context.Pipe()
            gpu = gpus[rank]
            args = WorkerArgs(rank, size, init_method, self.choice.kind, self.choice.timeout_s,
                              self._spec, self._settings, None if gpu is None else int(gpu),
                              threads, os.getpid())
            process = self._context.Process(target=main, args=(args, theirs, self._cancel),
                                            name=f"cp-rank{rank}", daemon=True)
            process.start()
            theirs.close()
            self._processes.append(process)
            self._conns.append(ours)

    def wait_ready(self) -> None:
        """Wait until every rank has loaded; LoadError (and no worker left) otherwise."""
        size = len(self._processes)
        try:
            for rank, reply in enumerate(self._gather(None, calling=False)):
                if reply[0] == "load_error":
                    raise LoadError(f"context-parallel worker rank {rank} could not load the "
                                    f"model: {reply[1]}") from reply[1]
        except FailedPrecondition as exc:  # a rank died while loading
            self.stop()
            raise LoadError(f"context parallelism: {self.broken} while loading") from exc
        except BaseException:
            self.stop()
            raise
        log.info("context parallelism: %d workers ready (pids %s)", size, self.pids)

    def stop(self) -> None:
        """Stop every worker: ask, then terminate, then kill; never leaves one behind."""
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        for process in self._processes:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for conn in self._conns:
            conn.close()
        self._processes, self._conns = [], []
        self.broken = self.broken or "the model was freed"
        _live.discard(self)

    # -- calls ---------------------------------------------------------------------
    def call(self, kwargs: dict[str, Any]) -> Any:
        """Run the pipeline call on all ranks; rank 0's output. The task's step callback
        (cancellation) is polled here and relayed to the ranks, which stop together."""
        watch: Callable[..., Any] | None = kwargs.pop("callback_on_step_end", None)
        with self._lock:
            if self.broken:
                raise FailedPrecondition(f"the context-parallel model cannot serve: "
                                         f"{self.broken}; call LoadModel again")
            self._cancel.value = 0
            for rank, conn in enumerate(self._conns):
                try:
                    conn.send(("call", kwargs, watch is not None))
                except (OSError, ValueError) as exc:
                    self._fail(f"worker rank {rank} is gone ({exc})")
            replies = self._gather(watch)
        errors = [reply[1] for reply in replies if reply[0] == "error"]
        if errors:
            if len(errors) < len(replies):  # the ranks disagree: their state is unknown
                self._fail_quietly("the ranks disagreed about a call (one failed alone)")
            first = errors[0]
            if isinstance(first, BackendError | ValueError | TypeError):
                raise first
            raise RuntimeError(f"context-parallel rank failed: {first}") from first
        return replies[0][1]

    def _gather(self, watch: Callable[..., Any] | None,
                calling: bool = True) -> list[tuple[Any, ...]]:
        """One reply per rank, in rank order; a rank that dies fails the group at once, and
        during a call (not a load, whose length varies by rank) one that stays silent long
        after another answered does too."""
        replies: dict[int, tuple[Any, ...]] = {}
        deadline: float | None = None  # set by the first reply: the others' collective timeout
        by_conn = {id(conn): rank for rank, conn in enumerate(self._conns)}
        sentinels = {p.sentinel: rank for rank, p in enumerate(self._processes)}
        while len(replies) < len(self._conns):
            waiting = [c for r, c in enumerate(self._conns) if r not in replies]
            ready = wait([*waiting, *sentinels], POLL_S)
            for item in ready:
                if isinstance(item, Connection):
                    rank = by_conn[id(item)]
                    try:
                        replies[rank] = item.recv()
                    except (EOFError, OSError):
                        self._died(rank)
            for item in ready:
                if not isinstance(item, Connection):  # a dead rank is a dead group
                    self._died(sentinels[item])
            if replies and deadline is None and calling:
                deadline = time.monotonic() + self.choice.timeout_s + STRAGGLER_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                late = [rank for rank in range(len(self._conns)) if rank not in replies]
                self._fail(f"worker rank {late[0]} did not answer within "
                           f"{self.choice.timeout_s:.0f} s after rank {min(replies)}")
            if watch is not None and not self._cancel.value:
                try:
                    watch(None, 0, None, {})
                except Cancelled:
                    self._cancel.value = 1
        return [replies[rank] for rank in range(len(self._conns))]

    def _died(self, rank: int) -> None:
        process = self._processes[rank]
        process.join(0.5)
        self._fail(f"worker rank {rank} (pid {process.pid}) exited with code "
                   f"{process.exitcode}")

    def _fail_quietly(self, reason: str) -> None:
        log.error("context parallelism: %s; stopping every worker", reason)
        self.broken = reason
        self.stop()
        self.broken = reason

    def _fail(self, reason: str) -> None:
        self._fail_quietly(reason)
        raise FailedPrecondition(f"the context-parallel model stopped: {reason}; the model is "
                                 f"no longer loaded, call LoadModel again")


@atexit.register
def _stop_all() -> None:
    """Server shutdown: no worker outlives the server process's normal exit."""
    for group in list(_live):
        group.stop()

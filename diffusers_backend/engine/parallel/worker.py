"""A context-parallel worker process: joins the process group, loads the pipeline, shards its
denoiser with diffusers' ``enable_parallelism``, then runs every call it is sent in lockstep
with the other ranks. Rank 0 sends the pipeline's output back; the others send ``None``."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from diffusers_backend.errors import Cancelled

log = logging.getLogger(__name__)
PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker needs to start; picklable (it crosses a spawn)."""

    rank: int
    world_size: int
    init_method: str
    kind: str  # ulysses | ring
    timeout_s: float
    spec: Any  # LoadSpec
    settings: Any  # Settings
    gpu: int | None  # the CUDA device this rank owns; None on a CPU
    threads: int
    parent_pid: int


def _server_alive(server_pid: int) -> bool:
    try:
        os.kill(server_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by another user's process
        return False
    return True


def _watch_parent(server_pid: int) -> None:
    """Exit as soon as the server process is gone, even when it was SIGKILLed: our parent
    (the fork server, which exits with the server) changes, or the server's pid is gone."""
    parent = os.getppid()

    def loop() -> None:
        while os.getppid() == parent and _server_alive(server_pid):
            time.sleep(PARENT_POLL_S)
        os._exit(3)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


@contextlib.contextmanager
def _accelerator_count_at_least_one() -> Iterator[None]:
    """diffusers (0.42) picks the rank's device as ``rank % torch.accelerator.device_count()``,
    which divides by zero on a machine without an accelerator. While ``enable_parallelism``
    runs on a CPU, the count reads 1 (the rank then gets ``cpu:0``, which is the CPU)."""
    import torch

    real = torch.accelerator.device_count
    if real() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def _cp_config(kind: str, world_size: int) -> Any:
    from diffusers import ContextParallelConfig

    if kind == "ring":
        return ContextParallelConfig(ring_degree=world_size)
    return ContextParallelConfig(ulysses_degree=world_size)


def _load(args: WorkerArgs) -> Any:
    """The same load the single-process server does, then the denoiser sharded."""
    from diffusers_backend import path_guard
    from diffusers_backend.loading.pipeline_loader import load_pipeline

    path_guard.set_allowed_roots(args.settings.allowed_paths)
    loaded = load_pipeline(replace(args.spec, tensor_parallel_size=0), args.settings)
    pipe = loaded.pipe
    denoiser: Any = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    with _accelerator_count_at_least_one():
        denoiser.enable_parallelism(config=_cp_config(args.kind, args.world_size))
    return pipe


def _agreed_cancel(cancel: Any) -> Any:
    """A step callback by which all ranks stop at the same step when the request is
    cancelled: the flag is all-reduced, so no rank leaves the others in a collective."""
    import torch
    import torch.distributed as dist

    def on_step_end(_pipe: Any, step: int, _timestep: Any,
                    callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        flag = torch.tensor([1.0 if cancel.value else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            raise Cancelled(f"request cancelled by the client at step {step + 1}")
        return callback_kwargs

    return on_step_end


def _serve(pipe: Any, conn: Connection, rank: int, cancel: Any) -> None:
    """Run each call as it comes; every rank gets the same kwargs (generator included)."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server closed the pipe or died
        if message[0] == "stop":
            return
        kwargs = dict(message[1])
        if message[2]:  # the caller watches for cancellation
            kwargs["callback_on_step_end"] = _agreed_cancel(cancel)
        try:
            output = pipe(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - the server raises it for the request
            conn.send(("error", _picklable(exc)))
            continue
        conn.send(("done", output if rank == 0 else None))


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - e.g. an exception holding a tensor or a lock
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def main(args: WorkerArgs, conn: Connection, cancel: Any) -> None:
    """Entry point of the spawned process."""
    _watch_parent(args.parent_pid)
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    import torch
    import torch.distributed as dist

    # Plain text on stderr (the server's log): the engine layer does not import serving's
    # JSON formatter, so JSON logs carry the workers' few lines as text.
    logging.basicConfig(level=getattr(logging, str(args.settings.log_level), logging.INFO),
                        format=f"%(asctime)s %(levelname)s rank{args.rank} %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    backend = "nccl" if args.gpu is not None else "gloo"
    try:
        if args.gpu is not None:
            torch.cuda.set_device(0)
        dist.init_process_group(backend, init_method=args.init_method, rank=args.rank,
                                world_size=args.world_size,
                                timeout=datetime.timedelta(seconds=args.timeout_s))
        pipe = _load(args)
    except BaseException as exc:  # noqa: BLE001 - reported to the server's LoadModel
        conn.send(("load_error", _picklable(exc)))
        return
    conn.send(("ready", None))
    log.info("context-parallel rank %d/%d ready (%s, %s)", args.rank, args.world_size,
             backend, args.kind)
    _serve(pipe, conn, args.rank, cancel)
    # Nothing to flush but the log: skip destroy_process_group and the interpreter's
    # teardown, which took 7 s here (gloo waits on the peer that is exiting too).
    logging.shutdown()
    os._exit(0)

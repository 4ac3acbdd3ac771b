"""LoadModel with ``TensorParallelSize``: one process, a balanced device map, or N
context-parallel workers (see :mod:`.modes`). The LoadModel reply names the mode."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from diffusers_backend.engine.parallel.modes import Choice, Mode, choose
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline

log = logging.getLogger(__name__)
# Speed options act on the workers' copies; the server's planning copy needs none.
_WORKER_ONLY_OPTIONS = ("fuse_qkv", "channels_last", "quantize", "context_parallel",
                        "context_parallel_timeout")


def load_model(spec: LoadSpec, settings: Settings) -> LoadedPipeline:
    """Load ``spec`` in the mode its TensorParallelSize, class and device call for."""
    from diffusers_backend.loading import placement
    from diffusers_backend.loading.pipeline_loader import find_class, load_pipeline

    if spec.tensor_parallel_size < 2:
        return load_pipeline(spec, settings)
    spec.validate()
    found, cls = find_class(spec, settings)
    device = placement.pick_device(spec, settings)
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    choice = choose(spec.tensor_parallel_size, cls, device, spec.options, gpus)
    if choice.mode is Mode.BALANCED:
        loaded = load_pipeline(spec, settings)  # placement.device_map_kwargs: "balanced"
        loaded.device = f"{gpus} GPUs (device_map balanced)"
        loaded.warnings.append(choice.warning)
        return loaded
    if choice.mode is Mode.SINGLE:
        loaded = load_pipeline(replace(spec, tensor_parallel_size=0), settings)
        loaded.warnings.append(choice.warning)
        return loaded
    loaded = _load_context_parallel(found, settings, choice, device)
    loaded.identity = spec.model  # what requests name: a link stays the link
    return loaded


def _load_context_parallel(spec: LoadSpec, settings: Settings, choice: Choice,
                           device: str) -> LoadedPipeline:
    """Start the workers (they load while the server loads its planning copy on the CPU)."""
    from diffusers_backend.engine.parallel.group import WorkerGroup
    from diffusers_backend.engine.parallel.pipeline import runs_on_workers
    from diffusers_backend.loading.pipeline_loader import load_pipeline

    started = time.perf_counter()
    group = WorkerGroup(choice, spec, settings, device)
    group.start()
    try:
        options = {k: v for k, v in spec.options.items() if k not in _WORKER_ONLY_OPTIONS}
        local = replace(spec, tensor_parallel_size=0, cuda=False, options=options)
        loaded = load_pipeline(local, settings)
        group.wait_ready()
    except BaseException:
        group.stop()
        raise
    loaded.pipe = runs_on_workers(loaded.pipe, group)
    loaded.load_seconds = time.perf_counter() - started  # the workers' load included
    processes = "GPU processes (NCCL)" if device == "cuda" else "CPU processes (gloo)"
    loaded.device = (f"{choice.world_size} {processes}, context parallel "
                     f"{choice.kind}, worker pids {', '.join(map(str, group.pids))}")
    return loaded


def stop_workers(loaded: LoadedPipeline | None) -> None:
    """Stop the workers of a model being freed or replaced (no-op for one process)."""
    from diffusers_backend.engine.parallel.pipeline import group_of

    group = group_of(loaded.pipe) if loaded is not None else None
    if group is not None:
        group.stop()

"""TensorParallelSize's modes, chosen at LoadModel from the pipeline class and the device
before any weights are read (engine/parallel/modes.py), and the pipeline that runs its calls
on the workers keeping its class's name and call signature (engine/parallel/pipeline.py).

In-process only: the workers themselves run in tests/e2e/test_context_parallel.py. The CUDA
cases are decided from a GPU count given to ``choose`` (no GPU here)."""

from __future__ import annotations

import pytest
from diffusers import FluxPipeline, QwenImagePipeline, StableDiffusionPipeline, WanPipeline

from diffusers_backend.engine.parallel.modes import Mode, choose, has_cp_plan
from diffusers_backend.errors import LoadError


def test_denoisers_with_a_context_parallel_plan_are_found_from_the_class():
    assert has_cp_plan(FluxPipeline) and has_cp_plan(QwenImagePipeline) and has_cp_plan(WanPipeline)
    assert not has_cp_plan(StableDiffusionPipeline)


@pytest.mark.parametrize(("size", "cls", "device", "gpus", "mode"), [
    (0, FluxPipeline, "cpu", 0, Mode.SINGLE),
    (1, FluxPipeline, "cuda", 4, Mode.SINGLE),
    (2, FluxPipeline, "cpu", 0, Mode.CONTEXT_PARALLEL),
    (4, FluxPipeline, "cuda", 8, Mode.CONTEXT_PARALLEL),
    (2, StableDiffusionPipeline, "cuda", 2, Mode.BALANCED),
    (2, StableDiffusionPipeline, "cpu", 0, Mode.SINGLE),
    (2, StableDiffusionPipeline, "cuda", 1, Mode.SINGLE),
    (2, FluxPipeline, "mps", 0, Mode.SINGLE),
])
def test_mode_by_size_pipeline_and_device(size, cls, device, gpus, mode):
    choice = choose(size, cls, device, {}, gpus)
    assert choice.mode is mode
    if mode is Mode.CONTEXT_PARALLEL:
        assert choice.world_size == size and choice.kind == "ulysses"
    # Anything but the asked-for parallelism says why, in the LoadModel reply.
    assert bool(choice.warning) == (size >= 2 and mode is not Mode.CONTEXT_PARALLEL)


@pytest.mark.parametrize(("options", "device", "gpus", "words"), [
    ({"context_parallel": "ring"}, "cpu", 0, "ring needs CUDA"),
    ({"context_parallel": "tree"}, "cpu", 0, "use one of ulysses, ring"),
    ({"compile": True}, "cpu", 0, "option compile cannot be used"),
    ({"cache": "first_block"}, "cuda", 2, "option cache cannot be used"),
    ({"context_parallel_timeout": 0}, "cpu", 0, "above 0"),
    ({}, "cuda", 1, "needs 2 GPUs, one per worker; 1 visible"),
])
def test_what_context_parallelism_cannot_run_is_refused_with_the_reason(options, device, gpus,
                                                                         words):
    with pytest.raises(LoadError, match=words):
        choose(2, FluxPipeline, device, options, gpus)


def test_ring_on_gpus_and_the_timeout_option_are_taken():
    choice = choose(2, FluxPipeline, "cuda", {"context_parallel": "ring",
                                              "context_parallel_timeout": 30}, 2)
    assert (choice.kind, choice.timeout_s) == ("ring", 30.0)


def test_the_pipeline_on_workers_keeps_its_class_name_and_call_signature():
    from tiny_image_models import tiny_flux_path

    from diffusers_backend.engine.parallel.group import WorkerGroup
    from diffusers_backend.engine.parallel.pipeline import group_of, runs_on_workers
    from diffusers_backend.registry.signatures import call_signature

    pipe = FluxPipeline.from_pretrained(str(tiny_flux_path()))
    group = WorkerGroup(choose(2, FluxPipeline, "cpu", {}, 0), None, None, "cpu")
    group.broken = "not started in this test"
    wrapped = runs_on_workers(pipe, group)
    assert type(wrapped).__name__ == "FluxPipeline" and isinstance(wrapped, FluxPipeline)
    assert call_signature(type(wrapped)) == call_signature(FluxPipeline)
    assert group_of(wrapped) is group and group_of(FluxPipeline.from_pretrained(
        str(tiny_flux_path()))) is None
    with pytest.raises(Exception, match="not started in this test"):  # the call went to it
        wrapped(prompt="x", num_inference_steps=1)

"""Placement on a GPU as LocalAI does it (``loading/placement.apply_memory_modes``): SVD and
LTX-2 offload to the CPU by default unless ``DISABLE_CPU_OFFLOAD`` or ``cpu_offload:false``,
other pipelines go to the device whole. Called in process with a recorder standing in for
the pipeline (this machine has no GPU, and diffusers' offload needs one)."""

from __future__ import annotations

import pytest


class _OffloadRecorder:
    """Stand-in for a pipeline on a CUDA machine (this one has no GPU, and diffusers'
    ``enable_model_cpu_offload`` needs one): records what placement asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def enable_model_cpu_offload(self, device=None):
        self.calls.append(f"offload:{device}")

    def enable_sequential_cpu_offload(self, device=None):
        self.calls.append(f"sequential:{device}")

    def to(self, device):
        self.calls.append(f"to:{device}")
        return self


@pytest.mark.parametrize("class_name,options,disable,expected", [
    ("StableVideoDiffusionPipeline", {}, False, "offload:cuda"),
    ("LTX2Pipeline", {}, False, "offload:cuda"),
    ("LTX2ImageToVideoPipeline", {}, False, "offload:cuda"),
    ("LTX2ImageToVideoPipeline", {}, True, "to:cuda"),
    ("StableVideoDiffusionPipeline", {"cpu_offload": False}, False, "to:cuda"),
    ("WanPipeline", {}, False, "to:cuda"),
])
def test_svd_and_ltx2_offload_by_default_on_a_gpu(class_name, options, disable, expected):
    from diffusers_backend.loading.placement import apply_memory_modes
    from diffusers_backend.loading.spec import LoadSpec
    from diffusers_backend.settings import Settings

    pipe = type(class_name, (_OffloadRecorder,), {})()
    spec = LoadSpec(model="m", cuda=True, options=options)
    apply_memory_modes(pipe, spec, Settings(disable_cpu_offload=disable), "cuda")
    assert pipe.calls == [expected]

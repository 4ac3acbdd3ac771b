"""Memory/speed modes: LowVRAM, offload, attention slicing, VAE slicing/tiling,
TensorParallelSize.

On this CPU-only test machine the GPU-only modes (model and sequential CPU offload,
device maps for TensorParallelSize > 1) are tested for WIRING only: the model loads,
generates, and the log says the mode was ignored on CPU. Attention slicing and VAE
slicing/tiling apply on every device and are checked on the pipeline itself. The last test
runs the real offload paths and is skipped without CUDA.
"""

from __future__ import annotations

import pytest
from features_support import load_ok, log_since, pixels

from diffusers_backend.loading.pipeline_loader import load_pipeline
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import load_settings

pytestmark = pytest.mark.usefixtures("free_backend_after")


CASES = [
    ({"LowVRAM": True}, "CPU offload only applies on a GPU; ignored on cpu"),
    ({"Options": ["sequential_cpu_offload:true"]}, "CPU offload only applies on a GPU"),
    ({"Options": ["cpu_offload:true"]}, "CPU offload only applies on a GPU"),
    ({"TensorParallelSize": 2}, "has no device map to spread it; loaded in one process"),
    ({"Options": ["attention_slicing:true"]}, "(attention slicing"),
    ({"Options": ["vae_slicing:true", "vae_tiling:true"]}, "(VAE slicing, VAE tiling"),
]


@pytest.mark.parametrize(("fields", "line"), CASES, ids=lambda v: str(v)[:40])
def test_mode_loads_generates_and_logs(backend, tiny_sd, tmp_path, fields, line):
    offset = len(backend.log())
    load_ok(backend, tiny_sd, **fields)
    backend.image(tmp_path / "out.png", seed=1, width=32, height=32)
    assert pixels(tmp_path / "out.png").shape == (32, 32, 3)
    assert line in log_since(backend, offset)


def test_slicing_and_tiling_are_enabled_on_the_pipeline(tiny_sd):
    spec = LoadSpec(model=str(tiny_sd),
                    options={"attention_slicing": True, "vae_slicing": True, "vae_tiling": True})
    loaded = load_pipeline(spec, load_settings({}))
    pipe = loaded.pipe
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    plain = load_pipeline(LoadSpec(model=str(tiny_sd)), load_settings({})).pipe
    assert "SlicedAttnProcessor" not in {type(p).__name__
                                          for p in plain.unet.attn_processors.values()}
    assert not plain.vae.use_tiling


def test_offload_on_a_gpu(tiny_sd, tmp_path):
    """GPU only: LowVRAM installs model CPU offload hooks, sequential offload its own."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    settings = load_settings({})
    model = load_pipeline(LoadSpec(model=str(tiny_sd), cuda=True, low_vram=True), settings)
    assert "model CPU offload" in model.description
    assert model.pipe._execution_device.type == "cuda"
    assert next(model.pipe.unet.parameters()).device.type == "cpu"  # parked until used
    image = model.pipe("a cube", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    seq = load_pipeline(LoadSpec(model=str(tiny_sd), cuda=True,
                                 options={"sequential_cpu_offload": True}), settings)
    assert "sequential CPU offload" in seq.description
    assert seq.pipe("a cube", num_inference_steps=2, height=64, width=64).images[0]

"""The hot-swap slot's folding, in process on the tiny SD: with a load-time LoRA, tags that
add LoRAs, change the load-time one's weight or turn it off give the eager adapters'
picture (within float noise), on ``compile_regional`` with ``compile_backend:eager``, under
dynamo's ``error_on_recompile`` (patched for this test only)."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from tiny_models import tiny_lora2_path, tiny_lora_path

TOLERANCE = 1e-4  # in [0, 1] pixel units; folding reorders float sums (~2e-6 seen)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hotswap-fold") / "loras"
    folder.mkdir()
    whole = load_file(str(tiny_lora_path()))
    save_file({k: v for k, v in whole.items() if k.startswith("unet.")},
              str(folder / "a.safetensors"))
    shutil.copy(tiny_lora2_path(), folder / "b.safetensors")
    return folder


def _run(pipe):
    import torch

    return pipe("a red cube", num_inference_steps=2, width=64, height=64, output_type="np",
                generator=torch.Generator().manual_seed(1)).images[0]


def test_tags_over_a_load_time_lora_fold_to_the_eager_pictures(tiny_sd, loras):
    import torch._dynamo
    from diffusers import StableDiffusionPipeline

    from diffusers_backend.loading import adapters, lora_hotswap
    from diffusers_backend.loading.acceleration.compile import compile_denoiser
    from diffusers_backend.loading.spec import LoadSpec
    from diffusers_backend.tasks import lora_call

    spec = LoadSpec(model=str(tiny_sd), model_path=str(loras.parent),
                    lora_adapter="loras/a.safetensors", lora_scale=0.6,
                    options={"compile_regional": True, "compile_backend": "eager",
                             "lora_hotswap_rank": 8})
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    adapters.load_loras(pipe, spec, True)
    assert "rank 8" in lora_hotswap.prepare(pipe, spec)
    compile_denoiser(pipe, spec.options)
    loaded = types.SimpleNamespace(pipe=pipe, spec=spec)
    prompts = {"load-time": "x", "off": "x <lora:a:0>", "both": "x <lora:a:1> <lora:b:0.5>"}
    served = {}
    with torch._dynamo.config.patch(error_on_recompile=True):
        for label in [*prompts, "load-time"]:
            _, tags = lora_call.plan_loras(loaded, prompts[label], "", True)
            with lora_call.applied(loaded, tags, True):
                served.setdefault(label, []).append(_run(pipe))

    ref = StableDiffusionPipeline.from_pretrained(tiny_sd)
    ref.set_progress_bar_config(disable=True)
    for name in ("a", "b"):
        ref.load_lora_weights(str(loras), weight_name=f"{name}.safetensors", adapter_name=name)
    ref.set_adapters(["a"], [0.6])
    expected = {"load-time": _run(ref)}
    ref.set_adapters(["a", "b"], [1.0, 0.5])
    expected["both"] = _run(ref)
    ref.disable_lora()
    expected["off"] = _run(ref)
    for label, pictures in served.items():
        for picture in pictures:
            assert np.abs(picture - expected[label]).max() < TOLERANCE, label
    assert np.abs(expected["off"] - expected["both"]).mean() > 100 * TOLERANCE

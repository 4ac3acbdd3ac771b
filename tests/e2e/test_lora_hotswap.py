"""LoRA tags on a compiled denoiser over gRPC: hot-swapped into one slot, nothing recompiles.

One server for the module, started with ``DIFFUSERS_COMPILE_ERROR_ON_RECOMPILE=1`` (dynamo's
``error_on_recompile``: a recompile fails the request) and step-level batching off (its
denoiser call passes other arguments than LoadModel's warm-up, which recompiles once for
reasons that have nothing to do with LoRAs). The tiny SD is served first
uncompiled (the reference pictures, through the plain adapter path), then with
``compile:true`` and ``compile_backend:eager`` (dynamo's graph capture and guards without
inductor's minutes of kernel compilation on this CPU). Folding the weights into the swapped
tensors reorders float sums, so pictures are compared within 0.5 of 255 on average; a LoRA
changes the tiny SD's picture by several units.
"""

from __future__ import annotations

import shutil

import grpc
import pytest
from features_support import load_ok, rpc_error
from harness import mean_diff, start_backend
from safetensors.torch import load_file, save_file
from tiny_models import tiny_lora2_path, tiny_lora_path

TOLERANCE = 0.5
SEQUENCE = ["a red cube <lora:unet-a:0.8>", "a red cube <lora:unet-a:0.8> <lora:unet-b:-0.5>",
            "a red cube", "a red cube <lora:unet-b>", "a red cube <lora:unet-a:0.3>",
            "a red cube"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """loras/unet-a (the UNet part of the tiny LoRA), unet-b and unet-c (UNet-only) and
    with-te (the tiny LoRA with its text-encoder layers)."""
    root = tmp_path_factory.mktemp("lora-hotswap")
    loras = root / "loras"
    loras.mkdir()
    whole = load_file(str(tiny_lora_path()))
    save_file({k: v for k, v in whole.items() if k.startswith("unet.")},
              str(loras / "unet-a.safetensors"))
    shutil.copy(tiny_lora2_path(), loras / "unet-b.safetensors")
    shutil.copy(tiny_lora2_path(), loras / "unet-c.safetensors")
    shutil.copy(tiny_lora_path(), loras / "with-te.safetensors")
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_sd, models):
    """The server, and the reference pictures of :data:`SEQUENCE` from the uncompiled model;
    the compiled model is loaded when the fixture returns."""
    server = start_backend(tmp_path_factory.mktemp("lora-hotswap-server"),
                           env={"DIFFUSERS_COMPILE_ERROR_ON_RECOMPILE": "1",
                                "DIFFUSERS_STEP_BATCHING": "false"})
    out = tmp_path_factory.mktemp("lora-hotswap-eager")
    load_ok(server, tiny_sd, ModelPath=str(models))
    references = [_image(server, out / f"eager-{i}.png", p) for i, p in enumerate(SEQUENCE)]
    load_ok(server, tiny_sd, ModelPath=str(models),
                    Options=["compile:true", "compile_backend:eager", "width:64", "height:64",
                             "lora_hotswap_rank:8"])
    assert "LoRA hot-swap slot rank 8" in server.log()
    yield server, references
    server.stop()


def _image(server, path, prompt):
    result = server.image(path, positive_prompt=prompt, seed=21)
    assert result.success, result.message
    return path


def test_switching_loras_weights_and_none_recompiles_nothing(served, tmp_path):
    server, references = served
    for round_ in range(2):  # the second round: every set again, in the same order
        for index, prompt in enumerate(SEQUENCE):
            compiled = _image(server, tmp_path / f"compiled-{round_}-{index}.png", prompt)
            assert mean_diff(references[index], compiled) < TOLERANCE, (round_, prompt)
    assert mean_diff(references[0], references[2]) > 1  # the LoRA does change the picture
    assert mean_diff(references[0], references[4]) > 0.5  # and so does its weight
    assert "Recompil" not in server.log()


def test_what_the_slot_cannot_hold_is_refused_and_serving_goes_on(served, tmp_path):
    server, references = served
    refusals = {"a red cube <lora:with-te:0.8>": "text-encoder",
                "a red cube <lora:unet-a> <lora:unet-b> <lora:unet-c>": "lora_hotswap_rank"}
    for prompt, reason in refusals.items():
        error = rpc_error(lambda p=prompt: server.image(tmp_path / "x.png", positive_prompt=p))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert reason in error.details()
    assert not (tmp_path / "x.png").exists()
    after = _image(server, tmp_path / "after.png", SEQUENCE[1])
    assert mean_diff(references[1], after) < TOLERANCE

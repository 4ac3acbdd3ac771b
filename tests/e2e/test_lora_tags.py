"""LoRA per request over gRPC: ``<lora:NAME:WEIGHT>`` prompt tags on the tiny SD, with tiny
random LoRAs in the models folder's ``loras/`` subfolder and in a ``lora_dir`` folder.

One server for the module (metrics on, step-level batching at its default, four gRPC
workers so concurrent requests really queue together). Pictures are compared exactly
(``same``: every pixel equal): a tag must give the load-time picture, not a close one.
"""

from __future__ import annotations

import shutil
import urllib.request

import grpc
import pytest
from features_support import load_ok, rpc_error
from harness import free_port, mean_diff, same, simultaneously, start_backend
from prometheus_client.parser import text_string_to_metric_families
from tiny_models import tiny_controlnet_path, tiny_lora2_path, tiny_lora_path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models/loras/{pixel-art,pixel-arc}.safetensors and extra/detail.safetensors."""
    root = tmp_path_factory.mktemp("lora-tags")
    (root / "models" / "loras").mkdir(parents=True)
    (root / "extra").mkdir()
    shutil.copy(tiny_lora_path(), root / "models" / "loras" / "pixel-art.safetensors")
    shutil.copy(tiny_lora2_path(), root / "models" / "loras" / "pixel-arc.safetensors")
    shutil.copy(tiny_lora2_path(), root / "extra" / "detail.safetensors")
    not_a_lora = tiny_controlnet_path() / "diffusion_pytorch_model.safetensors"
    shutil.copy(not_a_lora, root / "extra" / "zz-not-a-lora.safetensors")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd, models):
    port = free_port()
    server = start_backend(tmp_path_factory.mktemp("lora-tags-server"),
                           env={"DIFFUSERS_METRICS_ADDR": f"127.0.0.1:{port}",
                                "PYTHON_GRPC_MAX_WORKERS": "4"})
    server.metrics_url = f"http://127.0.0.1:{port}/metrics"
    load_ok(server, tiny_sd, ModelPath=str(models / "models"),
            Options=[f"lora_dir:{models / 'extra'}"])
    yield server
    server.stop()


def _image(server, path, prompt, seed=21, **fields):
    result = server.image(path, positive_prompt=prompt, seed=seed, **fields)
    assert result.success, result.message
    return result


def test_tag_weight_zero_and_tag_free_after_a_tag(server, tmp_path):
    _image(server, tmp_path / "plain.png", "a red cube")
    reply = _image(server, tmp_path / "tag.png", "a red cube <lora:pixel-art:0.8>")
    _image(server, tmp_path / "zero.png", "a red cube <lora:pixel-art:0>")
    _image(server, tmp_path / "after.png", "a red cube")
    _image(server, tmp_path / "mid.png", "a <lora:pixel-art:0.8> red cube")
    assert mean_diff(tmp_path / "plain.png", tmp_path / "tag.png") > 1
    assert "LoRA pixel-art:0.8" in reply.message
    assert same(tmp_path / "plain.png", tmp_path / "zero.png")
    assert same(tmp_path / "plain.png", tmp_path / "after.png")
    assert same(tmp_path / "tag.png", tmp_path / "mid.png")  # anywhere in the prompt


def test_tags_combine_and_the_lora_dir_folder_is_searched(server, tmp_path):
    _image(server, tmp_path / "one.png", "a red cube <lora:pixel-art:0.8>")
    _image(server, tmp_path / "two.png", "a red cube <lora:pixel-art:0.8> <lora:detail:-0.5>")
    _image(server, tmp_path / "one-again.png", "a red cube <lora:pixel-art:0.8>")
    assert mean_diff(tmp_path / "one.png", tmp_path / "two.png") > 0.5
    assert same(tmp_path / "one.png", tmp_path / "one-again.png")


def test_unknown_name_is_not_found_with_the_closest_names_first(server, tmp_path):
    error = rpc_error(lambda: server.image(tmp_path / "x.png",
                                           positive_prompt="a cube <lora:pixel-arx:0.5>"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    message = error.details()
    assert "pixel-arx" in message and "available:" in message
    listed = message.split("available:")[1]
    assert listed.index("pixel-ar") < listed.index("detail")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("prompt", "said"), [
    ("a cube <lora:pixel-art:strong>", "weight 'strong' is not a number"),
    ("a cube <lora:pixel-art:0.5", "no closing '>'"),
    ("a cube <lora::0.5>", "the LoRA name is empty"),
    ("a cube <lora:../models/loras/pixel-art>", "not a path"),
    ("a cube <lora:pixel-art:0.5:1>", "more than a name and a weight"),
    ("a cube <lora:pixel-art:nan>", "not a finite number"),
    ("a cube <lora:pixel-art> <lora:pixel-art:0.2>", "tagged twice"),
])
def test_malformed_tags_are_invalid_argument_saying_which(server, tmp_path, prompt, said):
    error = rpc_error(lambda: server.image(tmp_path / "x.png", positive_prompt=prompt))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert said in error.details()
    assert "Traceback" not in error.details()


def test_a_file_that_is_no_lora_for_this_model_is_invalid_argument(server, tmp_path):
    error = rpc_error(lambda: server.image(tmp_path / "x.png",
                                           positive_prompt="a cube <lora:zz-not-a-lora:1>"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "zz-not-a-lora" in error.details() and "cannot be applied" in error.details()
    assert not (tmp_path / "x.png").exists()
    _image(server, tmp_path / "plain.png", "a red cube")
    _image(server, tmp_path / "tag.png", "a red cube <lora:pixel-art:0.8>")
    assert mean_diff(tmp_path / "plain.png", tmp_path / "tag.png") > 1


def test_tags_in_the_negative_prompt_are_refused(server, tmp_path):
    error = rpc_error(lambda: server.image(tmp_path / "x.png", positive_prompt="a cube",
                                           negative_prompt="blurry <lora:pixel-art:1>"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "positive prompt only" in error.details()
    _image(server, tmp_path / "still.png", "a cube")  # the server keeps serving


def test_concurrent_requests_with_different_loras_each_get_their_own_picture(server,
                                                                            tmp_path):
    prompts = {31: "a red cube <lora:pixel-art:0.8>", 32: "a red cube <lora:pixel-arc:0.7>",
               33: "a red cube", 34: "a red cube <lora:pixel-art:0.8>"}
    for seed, prompt in prompts.items():
        _image(server, tmp_path / f"alone-{seed}.png", prompt, seed=seed)
    simultaneously([
        (lambda s=seed, p=prompt: _image(server, tmp_path / f"together-{s}.png", p,
                                         seed=s))
        for seed, prompt in prompts.items()])
    for seed in prompts:
        assert same(tmp_path / f"alone-{seed}.png", tmp_path / f"together-{seed}.png"), seed


def test_a_tag_gives_the_load_time_picture(server, tiny_sd, models, tmp_path):
    lora = models / "models" / "loras" / "pixel-art.safetensors"
    try:
        load_ok(server, tiny_sd, ModelPath=str(models / "models"), LoraAdapter=str(lora),
                LoraScale=0.8, Options=[f"lora_dir:{models / 'extra'}"])
        _image(server, tmp_path / "load-time.png", "a red cube")
        # A tag naming the load-time LoRA sets its weight: 0 turns it off for the request.
        _image(server, tmp_path / "off.png", "a red cube <lora:pixel-art:0>")
        _image(server, tmp_path / "plus.png", "a red cube <lora:detail:0.6>")
        _image(server, tmp_path / "load-time-again.png", "a red cube")
    finally:
        load_ok(server, tiny_sd, ModelPath=str(models / "models"),
                Options=[f"lora_dir:{models / 'extra'}"])
    _image(server, tmp_path / "tag.png", "a red cube <lora:pixel-art:0.8>")
    _image(server, tmp_path / "plain.png", "a red cube")
    _image(server, tmp_path / "both.png", "a red cube <lora:pixel-art:0.8> <lora:detail:0.6>")
    assert same(tmp_path / "load-time.png", tmp_path / "tag.png")
    assert same(tmp_path / "load-time.png", tmp_path / "load-time-again.png")
    assert same(tmp_path / "off.png", tmp_path / "plain.png")
    assert same(tmp_path / "plus.png", tmp_path / "both.png")


def test_cache_hits_misses_and_loads_are_metrics(server, tmp_path):
    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name.startswith("diffusers_lora_cache")}

    _image(server, tmp_path / "warm.png", "a cube <lora:pixel-arc:0.3>")
    before = scrape()
    _image(server, tmp_path / "hit.png", "a cube <lora:pixel-arc:0.5>")
    after = scrape()
    assert after["diffusers_lora_cache_hits_total"] == before["diffusers_lora_cache_hits_total"] + 1
    assert after["diffusers_lora_cache_misses_total"] == before["diffusers_lora_cache_misses_total"]
    assert after["diffusers_lora_cache_loads_total"] >= 1
    assert after["diffusers_lora_cache_adapters"] >= 1


def test_on_a_compiled_denoiser_tags_give_the_eager_pictures(server, tiny_sd, models, tmp_path):
    """Tags on a ``compile:true`` model are hot-swapped into one slot (test_lora_hotswap.py
    proves nothing recompiles); the weights folded into the tensors reorder float sums, so
    the pictures are those of the eager model within 0.5 of 255 on average.
    ``compile_backend:eager`` runs dynamo's graph capture and guards without inductor's
    minutes of kernel compilation on this CPU."""
    prompts = ["a red cube <lora:pixel-arc:0.8>", "a red cube"]
    for index, prompt in enumerate(prompts):
        _image(server, tmp_path / f"eager-{index}.png", prompt)
    try:
        load_ok(server, tiny_sd, ModelPath=str(models / "models"),
                Options=[f"lora_dir:{models / 'extra'}", "compile:true", "compile_backend:eager",
                         "width:64", "height:64"])
        for index, prompt in enumerate(prompts):
            _image(server, tmp_path / f"compiled-{index}.png", prompt)
    finally:
        load_ok(server, tiny_sd, ModelPath=str(models / "models"),
                Options=[f"lora_dir:{models / 'extra'}"])
    for index in range(len(prompts)):
        assert mean_diff(tmp_path / f"eager-{index}.png", tmp_path / f"compiled-{index}.png") \
            < 0.5, index

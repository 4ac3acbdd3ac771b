"""End to end over gRPC, with requests built exactly as LocalAI's Go host builds them
(``localai_host.py`` says where each field comes from), against model YAMLs from LocalAI's docs.

Each test names the point of the host-fidelity issue it shows.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from features_support import inpaint_request, log_since, pixels, rpc_error, same
from harness import backend_pb2, batch_of_each_seed, simultaneously, start_backend
from localai_host import LocalAIHost
from tiny_models import (
    tiny_lora2_path,
    tiny_lora_path,
    tiny_sd_path,
    tiny_sd_with_safety_checker_path,
)
from tiny_video_models import tiny_svd_path, tiny_text_to_video_path
from video_read import read_video

SIZE = "64x64"


pytestmark = pytest.mark.usefixtures("free_backend_after")


@pytest.fixture()
def models(tmp_path):
    """A LocalAI models folder: the tiny fixtures under the names a YAML would use."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name, path in (("tiny-sd", tiny_sd_path()), ("tiny-video", tiny_text_to_video_path()),
                       ("tiny-svd", tiny_svd_path()),
                       ("tiny-sd-nsfw", tiny_sd_with_safety_checker_path()),
                       ("lora-a.safetensors", tiny_lora_path()),
                       ("lora-b.safetensors", tiny_lora2_path())):
        (folder / name).symlink_to(path)
    return folder


def host_for(models, **yaml) -> LocalAIHost:
    yaml.setdefault("parameters", {"model": "tiny-sd"})
    yaml.setdefault("backend", "diffusers")
    yaml.setdefault("step", 2)
    return LocalAIHost(yaml, models)


def load(server, host: LocalAIHost) -> backend_pb2.Result:
    result = server.stub.LoadModel(host.model_options(), timeout=180)
    assert result.success, result.message
    return result


def generate(server, host: LocalAIHost, folder, prompt="a red cube", **kwargs):
    dst = host.output_file(folder)
    reply = server.stub.GenerateImage(host.image_request(prompt, dst, size=SIZE, **kwargs),
                                      timeout=180)
    return dst, reply.message


def seed_of(message: str) -> int:
    return int(message.split("seed=")[1].split(";")[0])


# -- 1. seeds ---------------------------------------------------------------------------------

def test_unseeded_requests_each_draw_a_fresh_seed(backend, models, tmp_path):
    """YAML without seed: the host loads with Seed=rand.Int32() and sends seed=-1. The
    server draws a new seed per image: not the load-time Seed (that would make every
    unseeded image alike), not the same twice."""
    host = host_for(models)
    load(backend, host)
    first, first_msg = generate(backend, host, tmp_path)
    second, second_msg = generate(backend, host, tmp_path)
    load_seed = host.model_options().Seed
    assert seed_of(first_msg) != seed_of(second_msg)
    assert load_seed not in (seed_of(first_msg), seed_of(second_msg))
    assert not same(first, second)


def test_a_yaml_seed_repeats_the_image(backend, models, tmp_path):
    host = host_for(models, seed=42)
    load(backend, host)
    first, first_msg = generate(backend, host, tmp_path)
    second, second_msg = generate(backend, host, tmp_path)
    assert seed_of(first_msg) == seed_of(second_msg) == 42
    assert same(first, second)


@pytest.fixture()
def batching_server(tmp_path):
    """Four clients fill the batch limit, so their call starts once all four are queued."""
    server = start_backend(tmp_path, env={"DIFFUSERS_MAX_BATCH": "4",
                                          "DIFFUSERS_BATCH_WINDOW_MS": "1000"})
    yield server
    server.stop()


def test_each_image_of_a_batch_gets_its_own_seed(batching_server, models, tmp_path):
    """Four simultaneous unseeded requests share one pipeline call (the server's request
    log says so); each image is the one its own seed makes alone, whatever its place."""
    host = host_for(models)
    load(batching_server, host)
    offset = len(batching_server.log())
    results = simultaneously([lambda: generate(batching_server, host, tmp_path)] * 4)
    seeds = [seed_of(message) for _, message in results]
    assert len(set(seeds)) == 4
    batches = batch_of_each_seed(batching_server.log()[offset:])
    assert [batches.get(seed) for seed in seeds] == [4] * 4
    for (batched, _), seed in zip(results, seeds, strict=True):
        alone = host.output_file(tmp_path)
        request = host.image_request("a red cube", alone, size=SIZE)
        request.seed = seed  # the same request, with the seed the server drew for it
        batching_server.stub.GenerateImage(request, timeout=180)
        diff = np.abs(pixels(batched) - pixels(alone))
        assert diff.max() <= 2, f"seed {seed} differs by {diff.max()} in the batch"


def test_inpainting_with_seed_0_is_random(backend, models, tmp_path):
    host = host_for(models)
    load(backend, host)
    picture = tmp_path / "picture.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 120, 40)).save(picture)
    _, mask, masked = inpaint_request(tmp_path, picture)
    outputs = []
    for _ in range(2):
        dst = host.output_file(tmp_path)
        request = host.inpainting_request("a hole", picture, mask, tmp_path, dst, steps=2,
                                          size=64)
        assert request.seed == 0
        backend.stub.GenerateImage(request, timeout=180)
        outputs.append(pixels(dst))
    assert np.abs(outputs[0][masked] - outputs[1][masked]).mean() > 1


# -- 2. options as LocalAI documents them ---------------------------------------------------

def test_docs_cfg_scale_option_is_the_guidance_scale(backend, models, tmp_path):
    """The docs' own example: options: ["cfg_scale:6"]."""
    images = {}
    for name, yaml in (("option", {"options": ["cfg_scale:6"]}), ("field", {"cfg_scale": 6}),
                       ("default", {})):
        host = host_for(models, seed=3, **yaml)
        load(backend, host)
        images[name], _ = generate(backend, host, tmp_path)
    assert same(images["option"], images["field"])
    assert not same(images["option"], images["default"])


def test_malformed_and_unknown_options_load_with_a_warning(backend, models, tmp_path):
    offset = len(backend.log())
    host = host_for(models, options=["nocolon", "not_a_knob:1", "guidance_rescale:0.5"])
    result = load(backend, host)
    for key in ("nocolon", "not_a_knob"):
        assert key in result.message and key in log_since(backend, offset)
    assert "guidance_rescale" not in result.message
    dst, message = generate(backend, host, tmp_path)
    assert "image written" in message and pixels(dst).shape == (64, 64, 3)


def test_a_bad_value_for_a_key_we_use_still_fails_clearly(backend, models):
    """A value that cannot mean anything for a key we read fails LoadModel, naming both.
    (Unknown dtype words are the exception: they load with a warning, as LocalAI's backend
    ignores them; test_parity_round2 pins that.)"""
    result = backend.stub.LoadModel(host_for(models, options=["compile_mode:fastest"])
                                    .model_options(), timeout=60)
    assert not result.success
    assert "compile_mode" in result.message and "fastest" in result.message
    assert "max-autotune" in result.message  # says what would work


def test_unknown_scheduler_type_keeps_the_models_scheduler(backend, models, tmp_path):
    """The docs' table shows scheduler_type k_dpp_sde (a typo LocalAI's backend ignores)."""
    plain = host_for(models, seed=8)
    load(backend, plain)
    expected, _ = generate(backend, plain, tmp_path)
    typo = host_for(models, seed=8, diffusers={"scheduler_type": "k_dpp_sde"})
    result = load(backend, typo)
    assert "k_dpp_sde" in result.message and "DDIMScheduler" in result.message
    got, _ = generate(backend, typo, tmp_path)
    assert same(expected, got)


# -- 4. video through the image endpoint, 7. video defaults ------------------------------------

@pytest.fixture()
def video_server(tmp_path):
    """FRAMES/CHUNK_SIZE as a LocalAI user sets them for the image endpoint's videos."""
    server = start_backend(tmp_path, env={"FRAMES": "3", "CHUNK_SIZE": "2"})
    yield server
    server.stop()


def test_txt2vid_through_generate_image_writes_an_mp4_at_dst(video_server, models, tmp_path):
    host = host_for(models, parameters={"model": "tiny-video"},
                    diffusers={"pipeline_type": "VideoDiffusionPipeline"})
    load(video_server, host)
    dst, message = generate(video_server, host, tmp_path, prompt="a cat walking")
    assert dst.suffix == ".png" and "video written" in message and "frames=3" in message
    assert dst.read_bytes()[4:8] == b"ftyp"  # an MP4 container, whatever the ending
    assert read_video(dst).frames.shape == (3, 64, 64, 3)


def test_img2vid_through_generate_image_uses_src_as_the_start_image(video_server, models,
                                                                     tmp_path):
    from features_support import write_image

    host = host_for(models, parameters={"model": "tiny-svd"},
                    diffusers={"pipeline_type": "StableVideoDiffusionPipeline"})
    load(video_server, host)
    start = write_image(tmp_path / "upload.png", seed=4)
    start = start.rename(tmp_path / "upload")  # the host's uploads have no ending
    dst, message = generate(video_server, host, tmp_path, src=str(start))
    assert "video written" in message and "frames=3" in message
    assert len(read_video(dst).frames) == 3


def test_video_defaults_follow_the_loaded_pipeline(backend, models, tmp_path):
    """The host sends 0 for what the user left out: frames and fps come from the pipeline
    (TextToVideoSDPipeline: 16 frames by its signature; no rate of its own, so 8 fps)."""
    host = host_for(models, parameters={"model": "tiny-video"})
    load(backend, host)
    dst = tmp_path / "clip.mp4"
    reply = backend.stub.GenerateVideo(host.video_request("a cat", dst, width=64, height=64,
                                                          step=2), timeout=180)
    assert "frames=16" in reply.message and "fps=8" in reply.message
    video = read_video(dst)
    assert len(video.frames) == 16
    assert video.fps == 8


@pytest.mark.parametrize("class_name,frames,fps,steps", [
    ("WanPipeline", 81, 16, 50), ("WanImageToVideoPipeline", 81, 16, 50),
    ("LTXPipeline", 161, 24, 50), ("LTX2ImageToVideoPipeline", None, 24, 30),
    ("StableVideoDiffusionPipeline", None, 7, 25), ("CogVideoXPipeline", None, 8, 50),
    ("TextToVideoSDPipeline", 16, 8, 50),
])
def test_video_defaults_per_family(class_name, frames, fps, steps):
    import diffusers

    from diffusers_backend.tasks.video_defaults import video_defaults

    defaults = video_defaults(getattr(diffusers, class_name))
    assert (defaults.frames, defaults.fps, defaults.steps) == (frames, fps, steps)


# -- 5. safety checker -----------------------------------------------------------------------

def test_safety_checker_is_off_by_default_and_an_option_keeps_it(backend, models, tmp_path):
    """An SD 1.x repo that ships a checker (this one fires on everything): black images on a
    backend that keeps it, as LocalAI's backend never does."""
    host = host_for(models, seed=5, parameters={"model": "tiny-sd-nsfw"})
    load(backend, host)
    dst, _ = generate(backend, host, tmp_path)
    assert pixels(dst).max() > 0
    keep = host_for(models, seed=5, parameters={"model": "tiny-sd-nsfw"},
                    options=["safety_checker:true"])
    load(backend, keep)
    dst, _ = generate(backend, keep, tmp_path)
    assert pixels(dst).max() == 0


# -- 6. FAILED_PRECONDITION only for "no model loaded" -----------------------------------------

def test_failed_precondition_means_no_model_and_nothing_else(backend, models, tmp_path):
    host = host_for(models)
    error = rpc_error(lambda: generate(backend, host, tmp_path))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    load(backend, host)
    error = rpc_error(lambda: backend.stub.GenerateVideo(
        host.video_request("a cat", tmp_path / "v.mp4"), timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "load a video pipeline" in error.details()


# -- 8. a model that is not there is named -----------------------------------------------------

def test_a_missing_model_names_every_place_looked(backend, models):
    host = host_for(models, parameters={"model": "nobody/no-such-model"})
    result = backend.stub.LoadModel(host.model_options(), timeout=60)
    assert not result.success
    assert str(models / "nobody/no-such-model") in result.message
    assert f"models folder: {models}" in result.message
    assert "Hub id 'nobody/no-such-model'" in result.message
    assert "HF_HUB_OFFLINE" in result.message


def test_a_missing_checkpoint_file_names_the_models_folder(backend, models):
    host = host_for(models, parameters={"model": "gone.safetensors"})
    result = backend.stub.LoadModel(host.model_options(), timeout=60)
    assert not result.success
    assert str(models / "gone.safetensors") in result.message
    assert f"models folder: {models}" in result.message


# -- 9. parent watch variables as LocalAI reads them -------------------------------------------

def test_odd_parent_watch_variables_never_stop_start_up(tmp_path):
    server = start_backend(tmp_path, env={"LOCALAI_BACKEND_PARENT_WATCH": "",
                                          "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": "soon"})
    try:
        assert server.stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
        assert "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL" in server.log()
        assert "using 2s" in server.log()
    finally:
        server.stop()


# -- 10. CLIP skip from the YAML, both LoRA fields ----------------------------------------------

def test_yaml_clip_skip_applies_whatever_enable_parameters_lists(backend, models, tmp_path):
    images = {}
    for name, diffusers in (("skip", {"clip_skip": 2}),
                            ("skip+filter", {"clip_skip": 2, "enable_parameters":
                                             "negative_prompt,num_inference_steps"}),
                            ("none", {})):
        host = host_for(models, seed=6, diffusers=diffusers)
        load(backend, host)
        images[name], _ = generate(backend, host, tmp_path)
    assert same(images["skip"], images["skip+filter"])
    assert not same(images["skip"], images["none"])


def test_lora_adapter_and_lora_adapters_together_load_both(backend, models, tmp_path):
    images = {}
    for name, yaml in (("a", {"lora_adapter": "lora-a.safetensors"}),
                       ("b", {"lora_adapters": ["lora-b.safetensors"]}),
                       ("both", {"lora_adapter": "lora-a.safetensors",
                                 "lora_adapters": ["lora-b.safetensors"]})):
        host = host_for(models, seed=11, **yaml)
        offset = len(backend.log())
        load(backend, host)
        if name == "both":
            loaded = log_since(backend, offset)
            assert "lora-a.safetensors" in loaded and "lora-b.safetensors" in loaded
        images[name], _ = generate(backend, host, tmp_path)
    assert not same(images["both"], images["a"])
    assert not same(images["both"], images["b"])


def test_a_missing_model_says_the_hub_was_reachable_and_has_no_such_repo(tmp_path, models):
    """With the Hub allowed, the message says what the Hub answered. The Hub here is a
    loopback server that knows no repo (HF_ENDPOINT), so nothing leaves the machine."""
    import http.server
    import threading

    class NoRepos(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(404)
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def log_message(self, *args):
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoRepos)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    server = start_backend(tmp_path, env={
        "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}"})
    try:
        host = host_for(models, parameters={"model": "nobody/no-such-model"})
        result = server.stub.LoadModel(host.model_options(), timeout=120)
    finally:
        server.stop()
        hub.shutdown()
    assert not result.success
    assert str(models / "nobody/no-such-model") in result.message
    assert "the Hub was reachable: no such repo there" in result.message

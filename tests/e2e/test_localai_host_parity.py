"""Parity with LocalAI's host: each behaviour over gRPC, sent the way LocalAI's host sends it
(``localai_host.py``), against real tiny pipelines: link models and managed artifacts,
EnableParameters, ref_images, video parameters, Flux's sequence length, dtype words, Sana's
bf16 variant, the x4 upscaler, SD_EMBED and packaging (torchvision, LocalAI's build types).

Rows of ``docs/localai-parity.md`` name the tests here. GPU offload defaults and the
torchvision requirement are tested in process in tests/unit/test_gpu_offload_defaults.py
and tests/unit/test_torchvision_requirement.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
from features_support import free, load_ok, rpc_error, write_image
from harness import REPO_ROOT, backend_pb2, mean_diff, same, start_backend
from localai_host import LocalAIHost
from tiny_image_models import tiny_flux_path, tiny_sana_path
from tiny_models import tiny_sd_path, tiny_sd_single_file, tiny_sd_upscale_path, tiny_sdxl_path
from tiny_video_models import tiny_text_to_video_path
from video_read import read_video

SIZE = "64x64"


@pytest.fixture()
def server(free_backend_after):
    """The session's shared server, its model freed after the test."""
    return free_backend_after


# ----------------------------------------------------------------------------- helpers


class _Site:
    """A loopback web server: path -> bytes, and every request it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.url = ""


@pytest.fixture()
def site():
    state = _Site()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _serve(self, body: bool) -> None:
            state.requests.append(f"{self.command} {self.path}")
            data = state.files.get(self.path.split("?", 1)[0])
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._serve(True)

        def do_HEAD(self):  # noqa: N802
            self._serve(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def host_for(models: Path, model: str, **yaml) -> LocalAIHost:
    yaml.setdefault("server", "diffusers")
    yaml.setdefault("step", 2)
    return LocalAIHost({"parameters": {"model": model}, **yaml}, models)


def load(server, host: LocalAIHost, **fields) -> backend_pb2.Result:
    options = host.model_options()
    for key, value in fields.items():
        setattr(options, key, value)
    result = server.stub.LoadModel(options, timeout=180)
    assert result.success, result.message
    return result


def generate(server, host: LocalAIHost, folder: Path, prompt: str = "a red cube", **fields):
    """One /v1/images/generations request; ``fields`` overwrite what the host would send."""
    dst = host.output_file(folder)
    request = host.image_request(prompt, dst, size=SIZE)
    for key, value in fields.items():
        if isinstance(value, list):
            del getattr(request, key)[:]
            getattr(request, key).extend(value)
        else:
            setattr(request, key, value)
    reply = server.stub.GenerateImage(request, timeout=180)
    return dst, reply.message


def video(server, host: LocalAIHost, dst: Path, **fields) -> str:
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 2)
    fields.setdefault("seed", 3)
    fields.setdefault("num_frames", 2)
    return server.stub.GenerateVideo(host.video_request("a cat", dst, **fields),
                                     timeout=180).message


def frames(path: Path) -> np.ndarray:
    return read_video(path).frames.astype(np.int16)


# ------------------------------------------------------- 1-2. links, managed artifacts


def test_a_link_model_answers_to_the_link_identity(server, site, tmp_path):
    """A YAML ``model: https://...`` (README's dreamshaper-url example): every request
    carries that link as ModelIdentity, and it is served; another identity is not."""
    site.files["/dreamshaper.safetensors"] = tiny_sd_single_file("safetensors").read_bytes()
    url = f"{site.url}/dreamshaper.safetensors"
    models = tmp_path / "models"
    models.mkdir()
    host = host_for(models, url, options=[f"config:{tiny_sd_path()}"])
    for attempt in ("download", "already on disk"):
        load(server, host)
        dst, message = generate(server, host, tmp_path, seed=5)
        assert "image written" in message, attempt
    assert (models / "dreamshaper.safetensors").is_file()
    request = host.image_request("x", tmp_path / "other.png", size=SIZE)
    request.ModelIdentity = "dreamshaper.safetensors"  # the file is not what was asked for
    error = rpc_error(lambda: server.stub.GenerateImage(request, timeout=60))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("model identity mismatch") and url in error.details()


@pytest.mark.parametrize("copy", ["folder", "file"])
@pytest.mark.parametrize("reference", ["hf-link", "loopback-link", "hub-id"])
def test_an_existing_model_file_loads_before_a_link_or_hub_id(server, site, tmp_path, copy,
                                                               reference):
    """The host's managed artifacts: ModelFile is its local copy, Model the reference as
    written. The copy loads and nothing is fetched (the loopback link would record it;
    the Hub is offline in tests, so a fetch would fail the load)."""
    models = tmp_path / "models"
    models.mkdir()
    local = models / "snapshots" / ("tiny-sd" if copy == "folder" else "tiny-sd.safetensors")
    local.parent.mkdir()
    local.symlink_to(tiny_sd_path() if copy == "folder" else tiny_sd_single_file("safetensors"))
    model = {"hf-link": "https://huggingface.co/Lykon/dreamshaper-8",
             "loopback-link": f"{site.url}/Lykon/dreamshaper-8.safetensors",
             "hub-id": "Lykon/dreamshaper-8"}[reference]
    options = [f"config:{tiny_sd_path()}"] if copy == "file" else []
    host = host_for(models, model, options=options)
    load(server, host, ModelFile=str(local))
    _, message = generate(server, host, tmp_path, seed=2)
    assert "image written" in message
    assert site.requests == []
    assert sorted(p.name for p in models.iterdir()) == ["snapshots"]  # nothing downloaded


# --------------------------------------------------------------- 3. EnableParameters


def test_enable_parameters_no_longer_filters_the_negative_prompt_or_steps(server, tmp_path):
    """Gallery flux / qwen-image YAMLs carry ``enable_parameters: num_inference_steps``;
    LocalAI's server ignores it, so the user's negative prompt still counts."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-sd").symlink_to(tiny_sd_path())
    plain = host_for(models, "tiny-sd", seed=4)
    listed = host_for(models, "tiny-sd", seed=4,
                      diffusers={"enable_parameters": "num_inference_steps"})
    load(server, plain)
    without, _ = generate(server, plain, tmp_path, "a red cube")
    negative, _ = generate(server, plain, tmp_path, "a red cube|blurry green")
    filtered, _ = generate(server, listed, tmp_path, "a red cube|blurry green")
    assert mean_diff(without, negative) > 0.2
    assert same(negative, filtered)
    steps_not_listed = host_for(models, "tiny-sd", seed=4, step=3,
                                diffusers={"enable_parameters": "negative_prompt"})
    _, message = generate(server, steps_not_listed, tmp_path)
    assert "steps=3" in message


# ------------------------------------------------------------- 4. ref_images over src


def test_ref_images_first_wins_over_src(loaded_backend, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    host = host_for(models, str(tiny_sd_path()), seed=9)
    a = write_image(tmp_path / "a.png", seed=1)
    b = write_image(tmp_path / "b.png", seed=2)
    both, message = generate(loaded_backend, host, tmp_path, src=str(a), ref_images=[str(b)])
    assert "from the input image" in message
    only_b, _ = generate(loaded_backend, host, tmp_path, src=str(b), ref_images=[])
    only_a, _ = generate(loaded_backend, host, tmp_path, src=str(a), ref_images=[])
    assert same(both, only_b)
    assert not same(both, only_a)


# ------------------------------------------------------------------------ 5. video


@pytest.fixture()
def video_models(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-video").symlink_to(tiny_text_to_video_path())
    return models


def test_video_cfg_scale_zero_means_4(server, video_models, tmp_path):
    """The /video endpoint sends cfg_scale 0 when the user gives none: LocalAI's 4.0,
    unless the YAML sets a guidance of its own."""
    host = host_for(video_models, "tiny-video")
    load(server, host)
    for name, cfg in (("zero", 0.0), ("four", 4.0), ("nine", 9.0)):
        video(server, host, tmp_path / f"{name}.mp4", cfg_scale=cfg)
    assert np.array_equal(frames(tmp_path / "zero.mp4"), frames(tmp_path / "four.mp4"))
    assert not np.array_equal(frames(tmp_path / "zero.mp4"), frames(tmp_path / "nine.mp4"))
    yaml_cfg = host_for(video_models, "tiny-video", cfg_scale=9)
    load(server, yaml_cfg)
    video(server, yaml_cfg, tmp_path / "yaml.mp4", cfg_scale=0.0)
    assert np.array_equal(frames(tmp_path / "yaml.mp4"), frames(tmp_path / "nine.mp4"))


def test_video_options_override_the_defaults(server, video_models, tmp_path):
    """YAML options set the video call's numbers as they do the image call's; what the
    request itself sets wins."""
    host = host_for(video_models, "tiny-video",
                    options=["num_frames:3", "fps:5", "guidance_scale:9"])
    load(server, host)
    message = video(server, host, tmp_path / "opts.mp4", num_frames=0, cfg_scale=0.0)
    assert "frames=3" in message and "fps=5" in message
    assert len(frames(tmp_path / "opts.mp4")) == 3
    asked = video(server, host, tmp_path / "asked.mp4", num_frames=2, fps=7, cfg_scale=9.0)
    assert "frames=2" in asked and "fps=7" in asked
    plain = host_for(video_models, "tiny-video")
    load(server, plain)
    # the same fps: the encoder's rate control depends on it
    video(server, plain, tmp_path / "nine.mp4", num_frames=3, fps=5, cfg_scale=9.0)
    assert np.array_equal(frames(tmp_path / "opts.mp4"), frames(tmp_path / "nine.mp4"))


def test_unknown_video_params_are_ignored_with_a_warning(server, video_models, tmp_path):
    host = host_for(video_models, "tiny-video")
    load(server, host)
    message = video(server, host, tmp_path / "p.mp4",
                    params={"motion_bucket": "3", "eta": "0.5"})
    assert "video written" in message
    assert "params key 'motion_bucket' ignored" in message
    assert "'eta'" not in message  # taken by the call: no warning
    assert "params key 'motion_bucket' ignored" in server.log()


@pytest.mark.parametrize("key,value,words", [
    ("latents", "0", "tensor"),
    ("prompt_embeds", "[0.1]", "tensor"),
    ("negative_prompt_embeds", "x", "tensor"),
    ("clip_skip", "-1", "clip_skip"),
    ("clip_skip", "99", "at most"),
    ("clip_skip", "1.5", "clip_skip"),
])
def test_wrongly_typed_video_params_are_invalid_argument(server, video_models, tmp_path, key,
                                                         value, words):
    host = host_for(video_models, "tiny-video")
    load(server, host)
    dst = tmp_path / "bad.mp4"
    error = rpc_error(lambda: video(server, host, dst, params={key: value}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert key in error.details() and words in error.details()
    assert not dst.exists()


# ------------------------------------------------------------------------ 6. Flux


def test_flux_calls_get_max_sequence_length_256(server, tmp_path):
    """FluxPipeline pads T5's prompt to max_sequence_length and attends to all of it, so
    256 and diffusers' own 512 give different pictures: the default one equals 256's."""
    pictures = {}
    for name, options in (("default", []), ("256", ["max_sequence_length:256"]),
                          ("512", ["max_sequence_length:512"])):
        load_ok(server, tiny_flux_path(), Options=options)
        pictures[name] = tmp_path / f"{name}.png"
        assert server.image(pictures[name], seed=5).success
    assert same(pictures["default"], pictures["256"])
    assert not same(pictures["default"], pictures["512"])


# -------------------------------------------------------------------- 7. dtype words


@pytest.mark.parametrize("f16,used", [(False, "float32"), (True, "float16")])
def test_unknown_torch_dtype_loads_with_a_warning_naming_the_dtype(server, tmp_path, f16,
                                                                   used):
    result = load_ok(server, tiny_sd_path(), Options=["torch_dtype:auto"], F16Memory=f16)
    assert "torch_dtype 'auto'" in result.message and used in result.message
    assert f"({used})" in result.message  # what was really loaded
    assert server.image(tmp_path / "auto.png", seed=1).success


def test_an_unknown_dtype_field_loads_with_a_warning(server, tmp_path):
    """ModelOptions.DType (not only the torch_dtype option) is read the same forgiving way."""
    result = load_ok(server, tiny_sd_path(), DType="fp7")
    assert "'fp7'" in result.message and "(float32)" in result.message
    assert server.image(tmp_path / "fp7.png", seed=1).success


# ------------------------------------------------------------------------ 8. Sana bf16


def test_sana_loads_the_bf16_variant(server, tmp_path):
    """A Sana folder with bf16-variant files and plain ones holding other weights: the
    picture is the one the original weights make, so the bf16 files were read."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sana"
    shutil.copytree(tiny_sana_path(), folder)
    for weights in folder.glob("*/*.safetensors"):
        variant = weights.with_name(weights.name.replace(".safetensors", ".bf16.safetensors"))
        shutil.copyfile(weights, variant)
        save_file({k: v * 0.5 for k, v in load_file(weights).items()}, weights)
    load_ok(server, tiny_sana_path())
    assert server.image(tmp_path / "original.png", seed=4).success
    result = load_ok(server, folder)
    assert "variant bf16" in result.message or "bf16" in server.log()
    assert server.image(tmp_path / "variant.png", seed=4).success
    assert same(tmp_path / "original.png", tmp_path / "variant.png")


# ------------------------------------------------------------------------ 9. upscale


def _upscale(server, src: Path, dst: Path) -> str:
    request = backend_pb2.UpscaleImageRequest(src=str(src), dst=str(dst), scale=0)
    return server.stub.UpscaleImage(request, timeout=300).message


def test_x4_upscaler_runs_its_own_defaults(server, tmp_path):
    src = write_image(tmp_path / "small.png", size=(16, 16), seed=5)
    load_ok(server, tiny_sd_upscale_path())
    message = _upscale(server, src, tmp_path / "up.png")
    assert "75 steps" in message and "guidance 9.0" in message
    load_ok(server, tiny_sd_upscale_path(),
            Options=["num_inference_steps:3", "guidance_scale:2"])
    message = _upscale(server, src, tmp_path / "up3.png")
    assert "3 steps" in message and "guidance 2.0" in message


# ------------------------------------------------------------------------ 10. SD_EMBED


@pytest.fixture(scope="module")
def sd_embed_server(tmp_path_factory):
    server = start_backend(tmp_path_factory.mktemp("sd-embed"), env={"SD_EMBED": "1"})
    yield server
    server.stop()


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_sd_embed_weights_sd15_and_sdxl_like_a1111(sd_embed_server, server, tmp_path, model):
    """With SD_EMBED=1 ``(word:1.5)`` is a weight: it changes the picture, ``(word:1.0)``
    is the plain prompt. Without it the brackets are just text."""
    path = tiny_sd_path() if model == "sd15" else tiny_sdxl_path()
    try:
        load_ok(sd_embed_server, path)
        out = {}
        for name, prompt in (("plain", "a red cube"), ("one", "a (red:1.0) cube"),
                             ("heavy", "a (red:1.5) cube")):
            out[name] = tmp_path / f"{name}.png"
            assert sd_embed_server.image(out[name], seed=6, positive_prompt=prompt).success
        assert same(out["plain"], out["one"])
        assert not same(out["plain"], out["heavy"])
    finally:
        free(sd_embed_server)
    load_ok(server, path)
    server.image(tmp_path / "off-plain.png", seed=6, positive_prompt="a red cube")
    server.image(tmp_path / "off-one.png", seed=6, positive_prompt="a (red:1.0) cube")
    assert not same(tmp_path / "off-plain.png", tmp_path / "off-one.png")


# ------------------------------------------------------------------------ 11. packaging


def test_qwen_image_edit_without_torchvision_says_so(server, tmp_path):
    """Gallery ``qwen-image-edit``: its Qwen2-VL processor needs torchvision, which the CPU
    build cannot have (see docs/localai-parity.md, Packaging). The load stops at once with
    one sentence naming it, before any weights are read."""
    from diffusers_backend.loading.dependencies import torchvision_problem

    if not torchvision_problem():
        pytest.skip("torchvision imports here: the load path is the ordinary one")
    folder = tmp_path / "qwen-image-edit"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "QwenImageEditPipeline", "_diffusers_version": "0.42.1",
        "processor": ["transformers", "Qwen2VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"]}))
    result = server.load(folder, PipelineType="QwenImageEditPipeline")
    assert not result.success
    assert "QwenImageEditPipeline needs torchvision" in result.message
    assert "torchvision==0.28.0" in result.message
    assert "Traceback" not in result.message and "_extra_content" not in result.message


def _pins(name: str) -> dict[str, str]:
    lines = (REPO_ROOT / name).read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


@pytest.mark.parametrize("build_type", ["cublas", "l4t"])
def test_localai_build_types_are_accepted(build_type, tmp_path):
    """LocalAI's images export BUILD_TYPE=cublas (CUDA) or l4t (Jetson): make installs
    their own requirements file, with the tested torch and the torchvision built for it."""
    out = subprocess.run(["make", "-n", "install", f"BUILD_TYPE={build_type}",
                          f"VENV={tmp_path / 'venv'}"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    installs = [line for line in out.splitlines() if "pip install" in line and " -r " in line]
    assert installs and f"-r requirements-{build_type}.txt" in installs[0]
    pins = _pins(f"requirements-{build_type}.txt")
    assert pins["torch"] == _pins("requirements-cpu.txt")["torch"] == "2.13.0"
    assert pins["torchvision"] == "0.28.0"
    assert "-r requirements.txt" in (REPO_ROOT / f"requirements-{build_type}.txt").read_text()

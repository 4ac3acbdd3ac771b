"""The tiny fixtures load through the public diffusers API and have the properties tests need."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models as tm  # tests/ is on pythonpath (pyproject.toml); conftest sets HF_HUB_OFFLINE
import tiny_video_models as tv
import torch
from PIL import Image

PROMPT = "a tiny cat"
IMAGE_KW = dict(height=64, width=64, num_inference_steps=2, output_type="np")


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max())


@pytest.fixture(scope="module")
def sd_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tm.tiny_sd_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd_image(sd_pipe):
    return sd_pipe(PROMPT, generator=_generator(), **IMAGE_KW).images


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_lora_files_change_the_image_and_stack(sd_pipe, sd_image):
    first, second = tm.tiny_lora_path(), tm.tiny_lora2_path()
    assert first.is_file() and first.suffix == ".safetensors"
    assert second.is_file() and second.name != first.name
    try:
        sd_pipe.load_lora_weights(str(first), adapter_name="first")
        with_first = sd_pipe(PROMPT, generator=_generator(), **IMAGE_KW).images
        assert _max_diff(with_first, sd_image) > 0.02
        assert sd_pipe.get_list_adapters() == {"unet": ["first"], "text_encoder": ["first"]}

        sd_pipe.load_lora_weights(str(second), adapter_name="second")
        sd_pipe.set_adapters(["first", "second"], adapter_weights=[1.0, 1.0])
        with_both = sd_pipe(PROMPT, generator=_generator(), **IMAGE_KW).images
        assert _max_diff(with_both, with_first) > 0.02
        assert not np.isnan(with_both).any()
    finally:
        sd_pipe.unload_lora_weights()
    unloaded = sd_pipe(PROMPT, generator=_generator(), **IMAGE_KW).images
    assert _max_diff(unloaded, sd_image) < 1e-5


@pytest.mark.slow
def test_controlnet_control_image_changes_the_output(sd_pipe):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    controlnet = ControlNetModel.from_pretrained(tm.tiny_controlnet_path())
    pipe = StableDiffusionControlNetPipeline.from_pipe(sd_pipe, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    outputs = [
        pipe(PROMPT, image=control, generator=_generator(), **IMAGE_KW).images
        for control in (Image.new("RGB", (64, 64), "white"), noise)
    ]
    assert outputs[0].shape == (1, 64, 64, 3)
    assert _max_diff(outputs[0], outputs[1]) > 0.02


@pytest.mark.slow
def test_upscaler_doubles_the_size():
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(tm.tiny_sd_upscale_path())
    pipe.set_progress_bar_config(disable=True)
    low_res = Image.new("RGB", (32, 24), "red")
    image = pipe(PROMPT, image=low_res, num_inference_steps=2, generator=_generator()).images[0]
    assert image.size == (64, 48)


@pytest.mark.slow
def test_svd_returns_frames():
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(tv.tiny_svd_path())
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        image=Image.new("RGB", (64, 64), "blue"),
        height=64,
        width=64,
        num_frames=2,
        num_inference_steps=2,
        decode_chunk_size=2,
        generator=_generator(),
    ).frames
    assert len(frames) == 1 and len(frames[0]) == 2  # one video of PIL frames
    assert all(isinstance(f, Image.Image) and f.size == (64, 64) for f in frames[0])


@pytest.mark.slow
def test_text_to_video_returns_frames():
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tv.tiny_text_to_video_path())
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        PROMPT, num_frames=4, height=64, width=64, num_inference_steps=2, generator=_generator()
    ).frames
    # Default output_type="np": float32 in [0, 1], shaped (batch, frames, height, width, 3).
    assert isinstance(frames, np.ndarray) and frames.shape == (1, 4, 64, 64, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["safetensors", "ckpt"])
def test_single_file_loads_the_same_weights(sd_pipe, sd_image, ext):
    from diffusers import StableDiffusionPipeline

    file = tm.tiny_sd_single_file(ext)
    assert file.is_file() and file.suffix == "." + ext
    pipe = StableDiffusionPipeline.from_single_file(str(file), config=str(tm.tiny_sd_path()))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, generator=_generator(), **IMAGE_KW).images
    assert _max_diff(image, sd_image) < 1e-5


@pytest.mark.parametrize("ext", [".ckpt", "bin", ".pt", ".pth"])
def test_pickle_checkpoint_has_the_extension(tmp_path, ext):
    file = tm.tiny_pickle_checkpoint(tmp_path, ext)
    assert file.parent == tmp_path and file.suffix == "." + ext.lstrip(".")
    state = torch.load(file, weights_only=True)["state_dict"]
    assert "model.diffusion_model.input_blocks.0.0.weight" in state

"""LoRA prompt tags in process: the syntax (prompts/lora_tags), the folders a NAME is looked
up in (loading/lora_library, path guard and SAFETENSORS included), and the LoRA set as part
of the batch and step keys (requests with different sets never share a denoiser pass).
The last test runs the tiny SD with prompt weighting on (COMPEL=1)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from diffusers_backend import path_guard
from diffusers_backend.errors import InvalidArgument, NotFound, PermissionDenied
from diffusers_backend.loading import lora_library
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.prompts.lora_tags import LoraTag, refuse_in_negative, split_tags


def test_tags_are_removed_anywhere_with_their_weights():
    clean, tags = split_tags("a castle at dusk <lora:pixel-art:0.8>, <LoRA:add-detail:-.4> x")
    assert clean == "a castle at dusk , x"
    assert tags == (LoraTag("pixel-art", 0.8), LoraTag("add-detail", -0.4))
    assert split_tags("<lora:solo>") == ("", (LoraTag("solo", 1.0),))
    assert split_tags("no tags < here > lora:x") == ("no tags < here > lora:x", ())


@pytest.mark.parametrize(("prompt", "said"), [
    ("<lora:x:1e999>", "not a finite number"),
    ("<lora:x:>", "is not a number"),
    ("<lora: :1>", "name is empty"),
    ("<lora:a\\b>", "not a path"),
    ("<lora:x <lora:y>", "no closing '>'"),
])
def test_malformed_tags_say_which(prompt, said):
    with pytest.raises(InvalidArgument, match=said):
        split_tags(prompt)


def test_negative_prompt_takes_no_tags():
    refuse_in_negative("blurry, lowres")
    with pytest.raises(InvalidArgument, match="positive prompt only"):
        refuse_in_negative("blurry <lora:x:1>")


@pytest.fixture()
def folders(tmp_path):
    from tiny_models import tiny_lora2_path

    models, extra = tmp_path / "models", tmp_path / "extra"
    (models / "loras").mkdir(parents=True)
    extra.mkdir()
    shutil.copy(tiny_lora2_path(), models / "loras" / "style.safetensors")
    shutil.copy(tiny_lora2_path(), models / "root-one.safetensors")
    shutil.copy(tiny_lora2_path(), extra / "style.safetensors")  # lora_dir wins the name
    (models / "loras" / "pickled.safetensors").write_bytes(b"PK\x03\x04 not safetensors")
    return tmp_path


def test_names_come_from_lora_dir_then_loras_then_the_models_folder(folders):
    spec = LoadSpec(model="m", model_path=str(folders / "models"),
                    options={"lora_dir": str(folders / "extra")})
    names = lora_library.available(spec)
    assert names["style"].parent == folders / "extra"
    assert names["root-one"].parent == folders / "models"
    assert lora_library.resolve(spec, "root-one", True).name == "root-one.safetensors"
    with pytest.raises(NotFound, match="available: style, root-one") as info:
        lora_library.resolve(spec, "styel", True)
    assert "pickled" in str(info.value)  # listed, but refused when used:
    with pytest.raises(Exception, match="SAFETENSORS=1 refuses"):
        lora_library.resolve(spec, "pickled", True)


def test_lora_folders_are_confined(folders):
    spec = LoadSpec(model="m", model_path=str(folders / "models"),
                    options={"lora_dir": "/etc"})
    path_guard.set_allowed_roots([str(folders)])
    try:
        with pytest.raises(PermissionDenied, match="LoRA folder /etc"):
            lora_library.available(spec)
    finally:
        path_guard.set_allowed_roots([])


@pytest.fixture(scope="module")
def loaded(tiny_sd, tmp_path_factory):
    from tiny_models import tiny_lora_path

    from diffusers_backend.engine.runtime import ModelRuntime
    from diffusers_backend.settings import Settings

    models = tmp_path_factory.mktemp("lora-unit")
    shutil.copy(tiny_lora_path(), models / "art.safetensors")
    runtime = ModelRuntime(Settings(idle_release_s=0))
    yield runtime.load(LoadSpec(model=str(tiny_sd), model_path=str(models)))
    runtime.close()


def _plan(loaded, prompt, settings=None):
    from diffusers_backend.settings import Settings
    from diffusers_backend.tasks.image import plan_image
    from diffusers_backend.tasks.jobs import ImageJob

    settings = settings or Settings(idle_release_s=0)
    dst = str(loaded.spec.model_path) + "/out.png"
    return plan_image(loaded, ImageJob(prompt=prompt, steps=2, seed=5, width=64, height=64,
                                       dst=dst), settings)


@pytest.mark.slow
def test_the_lora_set_is_part_of_the_batch_and_step_keys(loaded):
    from diffusers_backend.tasks.denoise import step_key

    plain, zero = _plan(loaded, "a cube"), _plan(loaded, "a ball <lora:art:0>")
    art, art2 = _plan(loaded, "a cube <lora:art:0.8>"), _plan(loaded, "a dog <lora:art:0.8>")
    half = _plan(loaded, "a cube <lora:art:0.5>")
    assert zero.loras.uses == () and zero.prompt == "a ball"  # weight 0: plain, no file read
    assert plain.batch_key() == zero.batch_key()
    assert art.batch_key() == art2.batch_key() != plain.batch_key()
    assert half.batch_key() != art.batch_key()
    assert step_key(plain) is not None  # the tiny SD (DDIM) has an engine-owned loop
    assert step_key(art) == step_key(art2) != step_key(plain)
    assert step_key(half) != step_key(art)


@pytest.mark.slow
def test_with_prompt_weighting_the_text_encoder_never_sees_the_tag(loaded, single_torch_thread):
    from diffusers_backend.engine.engine import Variants
    from diffusers_backend.settings import Settings
    from diffusers_backend.tasks.image import ImagePlan

    compel = Settings(idle_release_s=0, compel=True)

    def picture(prompt: str) -> np.ndarray:
        plan = _plan(loaded, prompt, compel)
        [output] = ImagePlan.run([plan], Variants(loaded.pipe), lambda: False)
        return np.asarray(output.image, dtype=np.int16)

    plain = picture("a (red)++ cube")
    assert (picture("a (red)++ cube <lora:art:0>") == plain).all()
    tagged = picture("a (red)++ cube <lora:art:0.8>")
    assert np.abs(tagged - plain).mean() > 1
    assert (picture("a (red)++ cube") == plain).all()
    assert _plan(loaded, "<lora:art> a (red)++ cube", compel).prompt == "a (red)++ cube"


@pytest.mark.slow
def test_video_prompts_take_the_same_tags(tmp_path):
    """On the tiny Wan (a family with diffusers' Wan LoRA loader): tags are parsed, resolved
    and stripped in the video plan as in an image plan. Only the plan: no tiny Wan LoRA is
    built here, so the adapters' effect on a video is not checked."""
    from tiny_models import tiny_lora2_path
    from tiny_video_models import tiny_wan_path

    from diffusers_backend.engine.runtime import ModelRuntime
    from diffusers_backend.settings import Settings
    from diffusers_backend.tasks.jobs import VideoJob
    from diffusers_backend.tasks.video import plan_video

    shutil.copy(tiny_lora2_path(), tmp_path / "motion.safetensors")
    settings = Settings(idle_release_s=0)
    runtime = ModelRuntime(settings)
    try:
        loaded = runtime.load(LoadSpec(model=str(tiny_wan_path()), model_path=str(tmp_path)))
        job = VideoJob(prompt="a cat <lora:motion:0> walking", dst=str(tmp_path / "v.mp4"),
                       num_frames=5, steps=2, width=32, height=32)
        plan = plan_video(loaded, job, settings)
        assert plan.prompt == "a cat walking" and not plan.loras
        with pytest.raises(NotFound, match="available: motion"):
            plan_video(loaded, dataclasses.replace(job, prompt="a cat <lora:motoin>"), settings)
        with pytest.raises(InvalidArgument, match="positive prompt only"):
            plan_video(loaded, dataclasses.replace(job, negative_prompt="<lora:motion>"),
                       settings)
    finally:
        runtime.close()

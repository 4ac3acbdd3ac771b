"""An image plan stays as it was validated: what the pipeline thread decides about a call
(steps raised for img2img, the variant that ran) comes back as values with each picture.

Real tiny SD pipeline, loaded by the server's own runtime; the plan runs in this thread.
"""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from diffusers_backend.engine.engine import Variants
from diffusers_backend.engine.runtime import ModelRuntime
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.image import ImageOutput, ImagePlan, plan_image
from diffusers_backend.tasks.jobs import ImageJob


@pytest.fixture(scope="module")
def loaded(tiny_sd):
    runtime = ModelRuntime(Settings(idle_release_s=0))
    loaded = runtime.load(LoadSpec(model=str(tiny_sd)))
    yield loaded
    runtime.close()


def test_img2img_steps_raised_for_strength_come_back_as_facts(loaded, tmp_path):
    """One step at the default strength would denoise zero steps; the call runs two. The
    plan keeps the request's one; the picture's facts and the reply say two."""
    source = tmp_path / "src.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    settings = Settings(idle_release_s=0)
    job = ImageJob(prompt="a red cube", steps=1, seed=7, width=64, height=64,
                   src=str(source), dst=str(tmp_path / "out.png"))
    plan = plan_image(loaded, job, settings)
    before = dataclasses.asdict(plan.job), plan.steps, plan.note
    [output] = ImagePlan.run([plan], Variants(loaded.pipe), lambda: False)
    assert isinstance(output, ImageOutput)
    assert (dataclasses.asdict(plan.job), plan.steps, plan.note) == before
    assert plan.steps == 1 and output.facts.steps == 2
    assert output.facts.pipeline == "StableDiffusionImg2ImgPipeline"
    reply = plan.write(output)
    assert "steps=2" in reply and "steps raised to 2" in reply
    assert "from the input image with StableDiffusionImg2ImgPipeline" in reply


def test_text_to_image_facts_are_the_plans_own(loaded, tmp_path):
    job = ImageJob(prompt="a cube", steps=2, seed=3, width=64, height=64,
                   dst=str(tmp_path / "t.png"))
    plan = plan_image(loaded, job, Settings(idle_release_s=0))
    [output] = ImagePlan.run([plan], Variants(loaded.pipe), lambda: False)
    assert output.facts.steps == plan.steps == 2
    assert output.facts.pipeline == type(loaded.pipe).__name__
    assert (output.width, output.height) == (64, 64)

"""CLIPSkip deeper than a model's CLIP text encoders is INVALID_ARGUMENT at validation, for
every family that has them, with the message shape SDXL always had.

Real tiny pipelines (two-layer CLIP encoders), loaded by the server's runtime; the plan is
the one both engines serve (a request-level call and the step-level loop), so a refusal
here is the refusal in both. SD 1.x reads ``hidden_states[-(n + 1)]`` (deepest 2), the
others ``hidden_states[-(n + 2)]`` (deepest 1).
"""

from __future__ import annotations

import pytest

from diffusers_backend.engine.runtime import ModelRuntime
from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.image import plan_image
from diffusers_backend.tasks.jobs import ImageJob

SETTINGS = Settings(idle_release_s=0, warmup=False)


def _family_path(family: str):
    import tiny_image_models
    import tiny_models

    return {"sd": tiny_models.tiny_sd_path, "sdxl": tiny_models.tiny_sdxl_path,
            "sd3": tiny_image_models.tiny_sd3_path,
            "flux": tiny_image_models.tiny_flux_path}[family]()


@pytest.mark.parametrize(("family", "deepest"), [("sd", 2), ("sdxl", 1), ("sd3", 1),
                                                 ("flux", 1)])
def test_clip_skip_deeper_than_the_encoders_is_refused(family, deepest, tmp_path):
    runtime = ModelRuntime(SETTINGS)
    try:
        loaded = runtime.load(LoadSpec(model=str(_family_path(family))))

        def job(clip_skip: int) -> ImageJob:
            return ImageJob(prompt="x", width=64, height=64, steps=1, clip_skip=clip_skip,
                            dst=str(tmp_path / "out.png"))

        assert plan_image(loaded, job(deepest), SETTINGS).clip_skip == deepest
        with pytest.raises(InvalidArgument) as refused:
            plan_image(loaded, job(deepest + 1), SETTINGS)
        assert str(refused.value) == (
            f"clip_skip {deepest + 1} is too large for this model: its text encoder has 2 "
            f"layers, so clip_skip can be at most {deepest}")
        # CLIPSKIP=0 (clip skip off): the value is ignored, never refused.
        off = Settings(idle_release_s=0, warmup=False, clip_skip_enabled=False)
        assert plan_image(loaded, job(deepest + 1), off).clip_skip == deepest + 1
    finally:
        runtime.close()

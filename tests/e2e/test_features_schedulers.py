"""SchedulerType end to end: every A1111 name (plain and ``k_``) and diffusers class names
load, are installed on the pipeline, and generate through GenerateImage."""

from __future__ import annotations

import pytest
from features_support import load_ok, log_since, mean_diff, pixels

from diffusers_backend.loading.schedulers import available_scheduler_names

EXPECTED_CLASS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_sde": "DPMSolverSDEScheduler",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler",
}
KARRAS_CAPABLE = {"heun", "unipc", "euler", "lms", "dpm_2", "dpm_2_a", "dpmpp_2m", "dpmpp_sde",
                  "dpmpp_2m_sde"}


pytestmark = pytest.mark.usefixtures("free_backend_after")


def test_every_a1111_name_is_covered():
    names = set(available_scheduler_names())
    assert names == set(EXPECTED_CLASS) | {"k_" + n for n in EXPECTED_CLASS}


@pytest.mark.parametrize(
    "name", [*available_scheduler_names(), "EulerDiscreteScheduler", "lcmscheduler"]
)
def test_scheduler_generates(backend, tiny_sd, tmp_path, name):
    offset = len(backend.log())
    load_ok(backend, tiny_sd, SchedulerType=name)
    base = name.removeprefix("k_")
    expected = EXPECTED_CLASS.get(base) or {"eulerdiscretescheduler": "EulerDiscreteScheduler",
                                            "lcmscheduler": "LCMScheduler"}[name.lower()]
    log = log_since(backend, offset)
    assert f"scheduler {name} = {expected}" in log, log[-2000:]
    karras = name.startswith("k_") and base in KARRAS_CAPABLE
    assert (f"= {expected} (karras)" in log) == karras
    # 3 steps: PNDM and the second-order samplers must cope with few steps.
    reply = backend.image(tmp_path / "out.png", seed=3, step=3, width=32, height=32)
    assert reply.success and "steps=3" in reply.message
    out = pixels(tmp_path / "out.png")
    assert out.shape == (32, 32, 3) and out.std() > 0


def test_two_schedulers_give_different_images(backend, tiny_sd, tmp_path):
    load_ok(backend, tiny_sd, SchedulerType="euler_a")
    backend.image(tmp_path / "a.png", seed=11)
    backend.image(tmp_path / "a2.png", seed=11)
    load_ok(backend, tiny_sd, SchedulerType="ddim")
    backend.image(tmp_path / "b.png", seed=11)
    assert mean_diff(tmp_path / "a.png", tmp_path / "a2.png") == 0  # same seed: same image
    assert mean_diff(tmp_path / "a.png", tmp_path / "b.png") > 0.5


def test_unknown_scheduler_keeps_the_models_own_and_lists_valid_names(backend, tiny_sd):
    """LocalAI's backend ignores a scheduler it does not know: we load with a warning that
    names it, keeps the model's scheduler and lists the valid names."""
    result = backend.load(tiny_sd, SchedulerType="euler_ancestral_typo")
    assert result.success
    assert "euler_ancestral_typo" in result.message and "DDIMScheduler" in result.message
    for valid in ("euler_a", "k_dpmpp_2m", "ddim"):
        assert valid in result.message

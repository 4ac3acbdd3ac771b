"""Scheduler names from a model YAML, run through a real (tiny) StableDiffusionPipeline."""

from __future__ import annotations

import pytest

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading.schedulers import (
    apply_scheduler,
    available_scheduler_names,
    make_scheduler,
)

A1111 = [
    "ddim",
    "pndm",
    "heun",
    "unipc",
    "euler",
    "euler_a",
    "lms",
    "dpm_2",
    "dpm_2_a",
    "dpmpp_2m",
    "dpmpp_sde",
    "dpmpp_2m_sde",
]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_sd_pipeline):
    return tiny_sd_pipeline


@pytest.fixture(scope="module")
def loaded():
    """The scheduler as the model ships it (other tests change ``pipe.scheduler``)."""
    from diffusers import DDIMScheduler
    from tiny_models import tiny_sd_path

    return DDIMScheduler.from_pretrained(tiny_sd_path(), subfolder="scheduler")


def _generate(pipe, steps: int = 3, seed: int = 0, prompt: str = "a red cube"):
    import torch

    return pipe(
        prompt,
        num_inference_steps=steps,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


def test_available_names_are_the_a1111_names_plain_and_karras():
    names = available_scheduler_names()
    assert set(names) == set(A1111) | {"k_" + n for n in A1111}
    assert len(names) == len(set(names)) == 24


@pytest.mark.slow
@pytest.mark.parametrize("name", [*A1111, *("k_" + n for n in A1111)])
def test_every_name_generates_with_any_step_count(pipe, name):
    import numpy as np

    apply_scheduler(pipe, name)
    for steps in (1, 2, 3, 7):
        images = _generate(pipe, steps=steps)
        assert images.shape == (1, 64, 64, 3), (name, steps)
        assert np.isfinite(images).all(), (name, steps)


@pytest.mark.parametrize(
    ("name", "cls", "karras"),
    [
        ("euler", "EulerDiscreteScheduler", False),
        ("k_euler", "EulerDiscreteScheduler", True),
        ("euler_a", "EulerAncestralDiscreteScheduler", None),
        ("k_euler_a", "EulerAncestralDiscreteScheduler", None),  # no Karras option: ignored
        ("dpmpp_2m", "DPMSolverMultistepScheduler", False),
        ("k_dpmpp_2m", "DPMSolverMultistepScheduler", True),
        ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", False),
        ("k_dpm_2_a", "KDPM2AncestralDiscreteScheduler", True),
        ("dpmpp_sde", "DPMSolverSDEScheduler", False),
        ("lms", "LMSDiscreteScheduler", False),
        ("pndm", "PNDMScheduler", None),
        ("DDIM", "DDIMScheduler", None),  # case-insensitive
    ],
)
def test_name_maps_to_class_and_karras_flag(loaded, name, cls, karras):
    scheduler = make_scheduler(name, loaded)
    assert type(scheduler).__name__ == cls
    if karras is None:
        assert "use_karras_sigmas" not in scheduler.config
    else:
        assert scheduler.config.use_karras_sigmas is karras


def test_dpmpp_variants_set_algorithm(loaded):
    assert make_scheduler("dpmpp_2m", loaded).config.algorithm_type == "dpmsolver++"
    sde = make_scheduler("dpmpp_2m_sde", loaded)
    assert sde.config.algorithm_type == "sde-dpmsolver++"
    # Switching back from the SDE variant must not keep its algorithm.
    assert make_scheduler("dpmpp_2m", sde).config.algorithm_type == "dpmsolver++"


def test_pndm_skips_prk_steps(loaded):
    assert make_scheduler("pndm", loaded).config.skip_prk_steps is True
    assert make_scheduler("PNDMScheduler", loaded).config.skip_prk_steps is True


def test_model_config_carries_over():
    from diffusers import DDIMScheduler

    loaded = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        steps_offset=1,
        rescale_betas_zero_snr=True,
    )
    for name in ("euler_a", "k_dpmpp_2m", "UniPCMultistepScheduler"):
        config = make_scheduler(name, loaded).config
        assert config.prediction_type == "v_prediction", name
        assert config.timestep_spacing == "trailing", name
        assert config.steps_offset == 1, name
        assert config.beta_schedule == "scaled_linear", name
        assert config.beta_start == 0.00085, name


def test_plain_name_turns_off_karras_from_model_config():
    from diffusers import DPMSolverMultistepScheduler

    loaded = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    assert make_scheduler("dpmpp_2m", loaded).config.use_karras_sigmas is False
    assert make_scheduler("k_dpmpp_2m", loaded).config.use_karras_sigmas is True
    # Only one sigma schedule may be on at a time; k_ turns the others off.
    exp = DPMSolverMultistepScheduler(use_exponential_sigmas=True)
    karras = make_scheduler("k_dpmpp_2m", exp)
    assert karras.config.use_karras_sigmas is True
    assert karras.config.use_exponential_sigmas is False


def test_switching_repeatedly_starts_from_the_loaded_config(pipe):
    original = pipe.scheduler
    try:
        apply_scheduler(pipe, "euler_a")
        apply_scheduler(pipe, "ddim")
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
        assert pipe.scheduler.config.set_alpha_to_one is False
        assert pipe.scheduler.config.steps_offset == 1
        assert pipe.scheduler.config.clip_sample is False
    finally:
        pipe.scheduler = original


@pytest.mark.slow
def test_different_schedulers_give_different_images(pipe):
    import numpy as np

    apply_scheduler(pipe, "euler")
    euler = _generate(pipe, steps=7, seed=42)
    apply_scheduler(pipe, "euler_a")
    ancestral = _generate(pipe, steps=7, seed=42)
    apply_scheduler(pipe, "ddim")
    ddim = _generate(pipe, steps=7, seed=42)
    assert not np.allclose(euler, ancestral)
    assert not np.allclose(euler, ddim)
    # ...and one scheduler with one seed is reproducible.
    apply_scheduler(pipe, "euler_a")
    assert np.array_equal(ancestral, _generate(pipe, steps=7, seed=42))


def test_empty_name_keeps_current(pipe):
    before = pipe.scheduler
    assert make_scheduler("", before) is None
    assert make_scheduler("   ", before) is None
    apply_scheduler(pipe, "")
    assert pipe.scheduler is before


@pytest.mark.parametrize(
    "name", ["EulerDiscreteScheduler", "eulerdiscretescheduler", "EULERDISCRETESCHEDULER"]
)
def test_diffusers_class_name_works_case_insensitively(pipe, name):
    import numpy as np

    apply_scheduler(pipe, name)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.steps_offset == 1
    assert np.isfinite(_generate(pipe, steps=2)).all()


def test_class_names_are_discovered_not_listed(loaded):
    # A class no A1111 name maps to.
    assert type(make_scheduler("DEISMultistepScheduler", loaded)).__name__ == (
        "DEISMultistepScheduler"
    )
    assert type(make_scheduler("lcmscheduler", loaded)).__name__ == "LCMScheduler"


def test_lms_generates(pipe):
    import numpy as np

    apply_scheduler(pipe, "lms")
    assert type(pipe.scheduler).__name__ == "LMSDiscreteScheduler"
    assert np.isfinite(_generate(pipe, steps=4)).all()


def test_unknown_name_lists_names_and_suggests(loaded):
    with pytest.raises(InvalidArgument) as info:
        make_scheduler("eular_a", loaded)
    message = str(info.value)
    assert "'eular_a'" in message
    assert "Did you mean 'euler_a'?" in message
    for name in available_scheduler_names():
        assert name in message
    assert "diffusers scheduler class name" in message


def test_unknown_class_name_suggests_the_class(loaded):
    with pytest.raises(InvalidArgument, match="Did you mean 'EulerDiscreteScheduler'"):
        make_scheduler("EulerDiscretScheduler", loaded)


def test_unknown_name_via_apply_leaves_pipeline_alone(pipe):
    before = pipe.scheduler
    with pytest.raises(InvalidArgument):
        apply_scheduler(pipe, "no_such_sampler")
    assert pipe.scheduler is before


def test_non_scheduler_export_is_refused(loaded):
    # Names are matched only against exports ending in "Scheduler".
    with pytest.raises(InvalidArgument):
        make_scheduler("StableDiffusionPipeline", loaded)


def test_flow_matching_model_gets_flow_matching_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    loaded = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    euler = make_scheduler("euler", loaded)
    assert type(euler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert euler.config.shift == 3.0
    assert euler.config.use_dynamic_shifting is True
    assert make_scheduler("k_euler", loaded).config.use_karras_sigmas is True
    with pytest.raises(InvalidArgument, match="flow-matching"):
        make_scheduler("dpmpp_2m", loaded)

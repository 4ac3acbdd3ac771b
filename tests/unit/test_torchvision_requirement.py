"""torchvision, which transformers needs for processors with a video part: every GPU build's
requirements carry it (the version built for the tested torch), the CPU build does not, and
the dependency check stops only the classes whose processor has a video part."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pins(name: str) -> dict[str, str]:
    lines = (REPO_ROOT / name).read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_a_processor_without_a_video_part_needs_no_torchvision():
    """The check only stops classes whose processor has a video part; SD passes."""
    from diffusers import QwenImageEditPipeline, StableDiffusionPipeline

    from diffusers_backend.loading.dependencies import check_pipeline_dependencies

    check_pipeline_dependencies(StableDiffusionPipeline, problem=lambda: "absent")
    check_pipeline_dependencies(QwenImageEditPipeline, problem=lambda: "")  # installed


def test_gpu_builds_carry_torchvision_and_the_cpu_build_does_not():
    for name in ("cuda", "cublas", "l4t", "hipblas", "intel", "mps"):
        assert _pins(f"requirements-{name}.txt").get("torchvision", "").startswith("0.28.0"), name
    assert "torchvision" not in _pins("requirements-cpu.txt")
    assert "torchvision" not in _pins("requirements.txt")

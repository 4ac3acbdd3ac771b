"""Tiny ControlNet annotators (random weights), built once and cached like the tiny models."""

from __future__ import annotations

from pathlib import Path

from tiny_models import cached_build


def _build_depth_annotator(path: Path) -> None:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    try:  # transformers 5 without torchvision: the PIL backend
        from transformers import DPTImageProcessorPil as Processor
    except ImportError:
        from transformers import DPTImageProcessor as Processor

    torch.manual_seed(0)
    DPTForDepthEstimation(DPTConfig(
        image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3), num_attention_heads=4, intermediate_size=37,
        neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_hidden_size=16,
        is_hybrid=False)).eval().save_pretrained(path)
    Processor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)


def tiny_depth_annotator_path() -> Path:
    """A tiny DPT depth-estimation model with its image processor, in one folder."""
    return cached_build("tiny-depth-annotator", _build_depth_annotator)

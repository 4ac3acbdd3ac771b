"""Tiny random-weight video pipelines beyond :mod:`tiny_models` / :mod:`tiny_special_models`:
Wan image-to-video (the Wan 2.2 layout: no CLIP image encoder, the start image enters as
conditioning latents beside the noise). Same recipe: real diffusers classes with tiny configs,
``save_pretrained``, cached under ``.test-fixtures/``."""

from __future__ import annotations

from pathlib import Path

from tiny_models import cached_build, tiny_clip_tokenizer
from tiny_special_models import tiny_t5_encoder


def _build_wan_i2v(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(  # 16 noise + 4 mask + 16 start-image channels
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    pipe = WanImageToVideoPipeline(
        tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_t5_encoder(0, True), vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformer)
    pipe.save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def tiny_wan_i2v_path() -> Path:
    """Folder of a tiny WanImageToVideoPipeline (no image encoder, 36-channel transformer)."""
    return cached_build("tiny-wan-i2v", _build_wan_i2v)

"""Tiny random-weight Flux, Wan and Sana pipelines: the families with special loaders.

Same idea as :mod:`tiny_models`: real diffusers classes with tiny configs, saved with
``save_pretrained`` and cached under ``.test-fixtures/``. Their text encoders (T5, UMT5,
Gemma 2) are tiny too; every tokenizer is the byte-level CLIP one from :mod:`tiny_models`
(sentencepiece vocabularies would need the Hub), which the pipelines accept because they only
call the tokenizer's standard interface.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import byte_level_vocab, cached_build, tiny_clip_text_encoder, tiny_clip_tokenizer

VOCAB_SIZE = len(byte_level_vocab())


def tiny_t5_encoder(seed: int = 0, umt5: bool = False):
    """A 2-layer T5 (Flux's text_encoder_2) or UMT5 (Wan's text encoder), width 32."""
    import torch
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config,
                                                                         T5EncoderModel)
    config = config_cls(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                        vocab_size=VOCAB_SIZE, relative_attention_num_buckets=8,
                        relative_attention_max_distance=16, pad_token_id=VOCAB_SIZE - 1,
                        eos_token_id=VOCAB_SIZE - 1, decoder_start_token_id=0)
    return model_cls(config).eval()


def _save_with_tokenizers(pipe, path: Path, *folders: str) -> None:
    pipe.save_pretrained(path)
    for folder in folders:  # vocab.json/merges.txt beside tokenizer.json, as in tiny_models
        tiny_clip_tokenizer(save_to=path / folder)


def _build_flux(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(  # 8x like the real one, so sizes snap to Flux's real multiple (16)
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=tiny_clip_text_encoder(0), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(0), tokenizer_2=tiny_clip_tokenizer(),
        transformer=transformer)
    _save_with_tokenizers(pipe, path, "tokenizer", "tokenizer_2")


def tiny_flux_path() -> Path:
    """Folder of a tiny FluxPipeline (1+1 transformer blocks, 8x VAE, CLIP + T5)."""
    return cached_build("tiny-flux", _build_flux)


def _build_wan(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    pipe = WanPipeline(tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_t5_encoder(0, True),
                       vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                       transformer=transformer)
    _save_with_tokenizers(pipe, path, "tokenizer")


def tiny_wan_path() -> Path:
    """Folder of a tiny WanPipeline (text-to-video: 3D VAE, 2-layer transformer, UMT5)."""
    return cached_build("tiny-wan", _build_wan)


def _build_sana(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
        attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
        cross_attention_dim=8, caption_channels=8, sample_size=32).eval()
    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407).eval()
    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=16, hidden_size=8, intermediate_size=64, max_position_embeddings=8192,
        num_attention_heads=2, num_hidden_layers=1, num_key_value_heads=2,
        vocab_size=VOCAB_SIZE, pad_token_id=VOCAB_SIZE - 1, bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1, attn_implementation="eager")).eval()
    pipe = SanaPipeline(tokenizer=tiny_clip_tokenizer(), text_encoder=text_encoder, vae=vae,
                        transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    _save_with_tokenizers(pipe, path, "tokenizer")


def tiny_sana_path() -> Path:
    """Folder of a tiny SanaPipeline (DC-AE, 1-layer linear-attention DiT, Gemma 2)."""
    return cached_build("tiny-sana", _build_sana)

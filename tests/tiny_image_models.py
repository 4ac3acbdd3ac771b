"""Tiny image families other than Stable Diffusion 1.x/2.x/XL: SD3, Flux (a pipeline and a
transformer saved alone), Chroma, Z-Image and Sana. Built like :mod:`tiny_models`."""

from __future__ import annotations

from pathlib import Path

from tiny_models import (
    VOCAB_SIZE,
    cached_build,
    chat_tokenizer,
    flux_like_vae,
    save_pipeline,
    tiny_clip_text_encoder,
    tiny_clip_tokenizer,
    tiny_t5_encoder,
)


def _build_sd3(path: Path) -> None:
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64, out_channels=4).eval()  # pooled: both CLIPs, 32 + 32
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=flux_like_vae(4),
        text_encoder=tiny_clip_text_encoder(0, projection=True), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_clip_text_encoder(1, projection=True),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=tiny_t5_encoder(0), tokenizer_3=tiny_clip_tokenizer())
    save_pipeline(pipe, path, "tokenizer", "tokenizer_2", "tokenizer_3")


def tiny_sd3_path() -> Path:
    """Folder of a tiny StableDiffusion3Pipeline (MMDiT, two CLIPs with projection, T5)."""
    return cached_build("tiny-sd3", _build_sd3)


def _build_chroma(path: Path) -> None:
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8],
        approximator_hidden_dim=32, approximator_layers=1,
        approximator_num_channels=16).eval()
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux_like_vae(1),
                          text_encoder=tiny_t5_encoder(0), tokenizer=tiny_clip_tokenizer(),
                          transformer=transformer)
    save_pipeline(pipe, path, "tokenizer")


def tiny_chroma_path() -> Path:
    """Folder of a tiny ChromaPipeline (Flux-like, T5 only, distilled guidance approximator)."""
    return cached_build("tiny-chroma", _build_chroma)


def _build_z_image(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
        cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32]).eval()
    with torch.no_grad():  # created with torch.empty: pin them so outputs are not NaN
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1,
        latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
        shift_factor=0.1159).eval()
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, vocab_size=VOCAB_SIZE,
        max_position_embeddings=512)).eval()
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                          text_encoder=text_encoder, tokenizer=chat_tokenizer(),
                          transformer=transformer)
    save_pipeline(pipe, path, "tokenizer", chat=True)


def tiny_z_image_path() -> Path:
    """Folder of a tiny ZImagePipeline (single-stream DiT, Qwen3 text encoder)."""
    return cached_build("tiny-z-image", _build_z_image)


def _build_flux_transformer_file(path: Path) -> None:
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    transformer = FluxTransformer2DModel.from_pretrained(tiny_flux_path(), subfolder="transformer")
    state = {k: v.detach().clone().contiguous() for k, v in transformer.state_dict().items()}
    save_file(state, str(path / "tiny-flux-transformer.safetensors"))


def tiny_flux_transformer_file() -> Path:
    """The tiny Flux pipeline's transformer alone, as one .safetensors file.

    Saved with diffusers' key names: diffusers' converter from the original BFL layout
    hard-codes FLUX.1's width (3072) when it splits the fused single-block projections, so a
    tiny transformer cannot round-trip through that layout. ``from_single_file`` loads
    diffusers-named files as they are (community fp8 exports are saved like this).
    """
    folder = cached_build("tiny-flux-transformer-file", _build_flux_transformer_file)
    return folder / "tiny-flux-transformer.safetensors"


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
    save_pipeline(pipe, path, "tokenizer", "tokenizer_2")


def tiny_flux_path() -> Path:
    """Folder of a tiny FluxPipeline (1+1 transformer blocks, 8x VAE, CLIP + T5)."""
    return cached_build("tiny-flux", _build_flux)


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
    save_pipeline(pipe, path, "tokenizer")


def tiny_sana_path() -> Path:
    """Folder of a tiny SanaPipeline (DC-AE, 1-layer linear-attention DiT, Gemma 2)."""
    return cached_build("tiny-sana", _build_sana)

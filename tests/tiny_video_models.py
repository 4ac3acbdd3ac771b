"""Tiny video families: Stable Video Diffusion, ModelScope text-to-video, Wan (text- and
image-to-video) and LTX-2 image-to-video. Built like :mod:`tiny_models`."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import (
    VOCAB_SIZE,
    cached_build,
    save_pipeline,
    sd_ddim_scheduler,
    tiny_clip_text_encoder,
    tiny_clip_tokenizer,
    tiny_t5_encoder,
    tiny_vae,
)


def _build_svd(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:  # transformers 5 without torchvision: the PIL backend, imported directly (no warning)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(4, 8),
        projection_class_embeddings_input_dim=3 * 32,  # fps, motion bucket, noise aug strength
        addition_time_embed_dim=32,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        latent_channels=4,
    ).eval()
    torch.manual_seed(0)
    # The pipeline resizes the conditioning image to 224 px for CLIP; 32 px patches keep it cheap.
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=32,
        )
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=ImageProcessor(crop_size=224, size=224),
    )
    pipe.save_pretrained(path)
    # Name the processor as Hub checkpoints do; transformers picks its PIL or torchvision backend.
    index = json.loads((path / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def tiny_svd_path() -> Path:
    """Folder of a tiny StableVideoDiffusionPipeline (image-to-video, 2x VAE, 224 px CLIP)."""
    return cached_build("tiny-svd", _build_svd)


def _build_text_to_video(path: Path) -> None:
    import torch
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    scheduler = sd_ddim_scheduler()
    pipe = TextToVideoSDPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_encoder(),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def tiny_text_to_video_path() -> Path:
    """Folder of a tiny TextToVideoSDPipeline (the ModelScope/zeroscope layout, UNet3D)."""
    return cached_build("tiny-text-to-video", _build_text_to_video)


# Call defaults a 2-layer LTX-2 needs (the real model's spatio-temporal guidance reads block
# 28), as a model YAML's options give them.
LTX2_TINY_OPTIONS = ["stg_scale:0", "audio_stg_scale:0", "spatio_temporal_guidance_blocks:[]",
                     "max_sequence_length:16"]


def _build_ltx2_image_to_video(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    text_layers, text_width = 2, 32  # the connectors run at the text width (4 heads x 8)
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config={"hidden_size": text_width, "intermediate_size": 32,
                     "num_hidden_layers": text_layers, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 8, "vocab_size": VOCAB_SIZE,
                     "sliding_window": 16, "max_position_embeddings": 512,
                     "pad_token_id": VOCAB_SIZE - 1, "eos_token_id": VOCAB_SIZE - 1,
                     "bos_token_id": VOCAB_SIZE - 2},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4, image_token_index=VOCAB_SIZE - 3,
        boi_token_index=VOCAB_SIZE - 4, eoi_token_index=VOCAB_SIZE - 5)).eval()
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4,
        audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
        caption_channels=text_width, rope_double_precision=False, rope_type="split").eval()
    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=text_width, text_proj_in_factor=text_layers + 1,
        video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
        causal_temporal_positioning=False, rope_type="split").eval()
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
        decoder_block_out_channels=(8,), layers_per_block=(1,), decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
        norm_type="pixel", causality_axis="height", dropout=0.0, mid_block_add_attention=False,
        sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8).eval()
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
        hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1, output_sampling_rate=16000).eval()
    pipe = LTX2ImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
        text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), connectors=connectors,
        transformer=transformer, vocoder=vocoder)
    save_pipeline(pipe, path, "tokenizer")


def tiny_ltx2_image_to_video_path() -> Path:
    """Folder of a tiny LTX2ImageToVideoPipeline (audio-video DiT, Gemma 3, video+audio VAEs)."""
    return cached_build("tiny-ltx2-image-to-video", _build_ltx2_image_to_video)


def _tiny_wan_vae():
    """Wan's 3D VAE (z_dim 16, 4x temporal and 8x spatial compression), tiny."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def _build_wan(path: Path) -> None:
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    vae = _tiny_wan_vae()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    pipe = WanPipeline(tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_t5_encoder(0, True),
                       vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                       transformer=transformer)
    save_pipeline(pipe, path, "tokenizer")


def tiny_wan_path() -> Path:
    """Folder of a tiny WanPipeline (text-to-video: 3D VAE, 2-layer transformer, UMT5)."""
    return cached_build("tiny-wan", _build_wan)


def _build_wan_i2v(path: Path) -> None:
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )

    vae = _tiny_wan_vae()
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

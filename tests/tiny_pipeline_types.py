"""Tiny random-weight pipelines of the families LocalAI's docs and gallery name as
``pipeline_type``: SDXL, SD3, Chroma, Z-Image, Depth2Img, LTX-2 image-to-video, and a Flux
transformer saved alone (``pipeline_type: FluxTransformer2DModel``).

Same recipe as :mod:`tiny_models` and :mod:`tiny_special_models`: real diffusers classes with
tiny configs, saved with ``save_pretrained`` and cached under ``.test-fixtures/``. Every
tokenizer is the byte-level CLIP one (no vocabulary downloads); pipelines that format prompts
with a chat template get a one-line template, since they only call the tokenizer's standard
interface.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import (
    cached_build,
    sd_ddim_scheduler,
    tiny_clip_text_encoder,
    tiny_clip_tokenizer,
    tiny_unet,
    tiny_vae,
)
from tiny_special_models import VOCAB_SIZE, tiny_flux_path, tiny_t5_encoder

# The prompt itself: enough for pipelines that wrap prompts in a chat template.
PLAIN_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def _chat_tokenizer():
    tokenizer = tiny_clip_tokenizer()
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def _save(pipe, path: Path, *tokenizer_folders: str, chat: bool = False) -> None:
    """save_pretrained, then vocab.json/merges.txt beside each tokenizer (as tiny_models does)."""
    pipe.save_pretrained(path)
    for folder in tokenizer_folders:
        tokenizer = tiny_clip_tokenizer(save_to=path / folder)
        if chat:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
            tokenizer.save_pretrained(path / folder)


def _rename_processor(path: Path, component: str, class_name: str) -> None:
    """Name a PIL image processor as Hub checkpoints do (transformers picks its backend)."""
    index = json.loads((path / "model_index.json").read_text())
    index[component] = ["transformers", class_name]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _flux_like_vae(latent_channels: int, seed: int = 0):
    """A 4-block (8x) KL VAE like Flux's, so sizes snap to the real multiple (16)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035).eval()


# --------------------------------------------------------------------------------------
# SDXL and Stable Diffusion 3
# --------------------------------------------------------------------------------------


def _build_sdxl(path: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = tiny_unet(
        cross_attention_dim=64,  # both 32-wide encoders' hidden states side by side
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
        attention_head_dim=(2, 4), use_linear_projection=True)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(0),
        text_encoder_2=tiny_clip_text_encoder(1, projection=True),
        tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                         beta_end=0.012, steps_offset=1,
                                         timestep_spacing="leading"))
    _save(pipe, path, "tokenizer", "tokenizer_2")


def tiny_sdxl_path() -> Path:
    """Folder of a tiny StableDiffusionXLPipeline (two 32-wide CLIP encoders)."""
    return cached_build("tiny-sdxl", _build_sdxl)


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
        vae=_flux_like_vae(4),
        text_encoder=tiny_clip_text_encoder(0, projection=True), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_clip_text_encoder(1, projection=True),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=tiny_t5_encoder(0), tokenizer_3=tiny_clip_tokenizer())
    _save(pipe, path, "tokenizer", "tokenizer_2", "tokenizer_3")


def tiny_sd3_path() -> Path:
    """Folder of a tiny StableDiffusion3Pipeline (MMDiT, two CLIPs with projection, T5)."""
    return cached_build("tiny-sd3", _build_sd3)


# --------------------------------------------------------------------------------------
# Chroma, Z-Image, and the Flux transformer alone
# --------------------------------------------------------------------------------------


def _build_chroma(path: Path) -> None:
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8],
        approximator_hidden_dim=32, approximator_layers=1,
        approximator_num_channels=16).eval()
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux_like_vae(1),
                          text_encoder=tiny_t5_encoder(0), tokenizer=tiny_clip_tokenizer(),
                          transformer=transformer)
    _save(pipe, path, "tokenizer")


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
                          text_encoder=text_encoder, tokenizer=_chat_tokenizer(),
                          transformer=transformer)
    _save(pipe, path, "tokenizer", chat=True)


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


# --------------------------------------------------------------------------------------
# Stable Diffusion 2 depth-to-image
# --------------------------------------------------------------------------------------


def _build_depth2img(path: Path) -> None:
    import torch
    from diffusers import StableDiffusionDepth2ImgPipeline
    from transformers import DPTConfig, DPTForDepthEstimation

    try:  # transformers 5 without torchvision: the PIL backend, imported directly
        from transformers import DPTImageProcessorPil as DepthProcessor
    except ImportError:
        from transformers import DPTImageProcessor as DepthProcessor

    torch.manual_seed(0)
    depth_estimator = DPTForDepthEstimation(DPTConfig(
        image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3), num_attention_heads=4, intermediate_size=37,
        neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_hidden_size=16,
        is_hybrid=False)).eval()
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(), tokenizer=tiny_clip_tokenizer(),
        unet=tiny_unet(in_channels=5),  # 4 latent channels + the depth map
        scheduler=sd_ddim_scheduler(), depth_estimator=depth_estimator,
        feature_extractor=DepthProcessor(size={"height": 32, "width": 32},
                                         keep_aspect_ratio=False))
    _save(pipe, path, "tokenizer")
    _rename_processor(path, "feature_extractor", "DPTImageProcessor")


def tiny_depth2img_path() -> Path:
    """Folder of a tiny StableDiffusionDepth2ImgPipeline (ViT DPT depth estimator at 32 px)."""
    return cached_build("tiny-depth2img", _build_depth2img)


# --------------------------------------------------------------------------------------
# LTX-2 image-to-video (video + audio, Gemma 3 text encoder)
# --------------------------------------------------------------------------------------

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
    _save(pipe, path, "tokenizer")


def tiny_ltx2_image_to_video_path() -> Path:
    """Folder of a tiny LTX2ImageToVideoPipeline (audio-video DiT, Gemma 3, video+audio VAEs)."""
    return cached_build("tiny-ltx2-image-to-video", _build_ltx2_image_to_video)

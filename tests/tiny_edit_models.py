"""Tiny editing pipelines (issue 28): FLUX.1 Fill (image + mask), FLUX.1 Kontext (one
reference) and FLUX.2 [klein] (a list of references). Built like :mod:`tiny_models`.

Qwen-Image-Edit-2509 (QwenImageEditPlusPipeline) is not built here: its Qwen2.5-VL processor
needs torchvision, which has no CPU wheel beside this torch (docs/localai-parity.md).
"""

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


def _flux_parts(in_channels: int, out_channels: int) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=out_channels, num_layers=1,
        num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)).eval()
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux_like_vae(1),
                text_encoder=tiny_clip_text_encoder(0), tokenizer=tiny_clip_tokenizer(),
                text_encoder_2=tiny_t5_encoder(0), tokenizer_2=tiny_clip_tokenizer(),
                transformer=transformer)


def _build_flux_fill(path: Path) -> None:
    from diffusers import FluxFillPipeline

    # Packed 2x2 latents (4) + the masked picture's latents (4) + the 8x8 mask, packed (256).
    pipe = FluxFillPipeline(**_flux_parts(in_channels=4 + 4 + 256, out_channels=4))
    save_pipeline(pipe, path, "tokenizer", "tokenizer_2")


def tiny_flux_fill_path() -> Path:
    """Folder of a tiny FluxFillPipeline (inpainting: image + mask_image)."""
    return cached_build("tiny-flux-fill", _build_flux_fill)


def _build_flux_kontext(path: Path) -> None:
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline(**_flux_parts(in_channels=4, out_channels=4))
    save_pipeline(pipe, path, "tokenizer", "tokenizer_2")


def tiny_flux_kontext_path() -> Path:
    """Folder of a tiny FluxKontextPipeline (one reference image)."""
    return cached_build("tiny-flux-kontext", _build_flux_kontext)


def _build_flux2_klein(path: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False).eval()
    torch.manual_seed(0)
    # 28 layers: the pipeline stacks hidden states 9, 18 and 27 (3 x 16 = joint_attention_dim).
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, vocab_size=VOCAB_SIZE,
        max_position_embeddings=512)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4),
        layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False).eval()
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                              text_encoder=text_encoder, tokenizer=chat_tokenizer(),
                              transformer=transformer)
    save_pipeline(pipe, path, "tokenizer", chat=True)


def tiny_flux2_klein_path() -> Path:
    """Folder of a tiny Flux2KleinPipeline (several reference images, Qwen3 encoder)."""
    return cached_build("tiny-flux2-klein", _build_flux2_klein)


def _build_sd_ip_adapter(path: Path) -> None:
    """An IP-Adapter for the tiny SD UNet, in h94/IP-Adapter's layout: one safetensors file
    (``image_proj.*`` and ``ip_adapter.<n>.to_k_ip/to_v_ip``, n = 1, 3, 5... over the
    cross-attention layers) and an ``image_encoder`` folder beside it."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from tiny_models import tiny_sd_path
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path(), subfolder="unet")
    cross, channels = unet.config.cross_attention_dim, list(unet.config.block_out_channels)
    tokens = 4
    torch.manual_seed(0)
    weights: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(cross * tokens, cross) * 0.5,
        "image_proj.proj.bias": torch.zeros(cross * tokens),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key}.{part}.weight"] = torch.randn(hidden, cross) * 0.5
        key += 2
    save_file(weights, str(path / "ip-adapter_tiny.safetensors"))
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=cross, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, image_size=32, patch_size=8)).eval()
    encoder.save_pretrained(path / "image_encoder")


def tiny_sd_ip_adapter_path() -> Path:
    """Folder of a tiny SD IP-Adapter: ``ip-adapter_tiny.safetensors`` + ``image_encoder/``."""
    return cached_build("tiny-sd-ip-adapter", _build_sd_ip_adapter)


# Flux2Pipeline formats prompts as chat messages whose content is a list of parts.
PARTS_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{% endfor %}")


def _build_flux2(path: Path) -> None:
    """FLUX.2 [dev]'s pipeline with a Mistral-3 text encoder of 31 tiny layers (it stacks
    hidden states 10, 20 and 30). Its tokenizer is the byte-level CLIP one with a chat
    template instead of the Hub's Pixtral processor: the prompt path only applies the chat
    template, which a tokenizer does as well."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4]).eval()
    torch.manual_seed(0)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=dict(model_type="mistral", hidden_size=16, intermediate_size=16,
                         num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=8, vocab_size=VOCAB_SIZE, max_position_embeddings=512),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=16,
                           num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                           image_size=32, patch_size=8),
        spatial_merge_size=1, image_token_index=VOCAB_SIZE - 1)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4),
        layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False).eval()
    tokenizer = tiny_clip_tokenizer()
    tokenizer.chat_template = PARTS_CHAT_TEMPLATE
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                         text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(path)
    saved = tiny_clip_tokenizer(save_to=path / "tokenizer")
    saved.chat_template = PARTS_CHAT_TEMPLATE
    saved.save_pretrained(path / "tokenizer")


def tiny_flux2_path() -> Path:
    """Folder of a tiny Flux2Pipeline (FLUX.2 [dev]: several references, Mistral-3 encoder)."""
    return cached_build("tiny-flux2", _build_flux2)

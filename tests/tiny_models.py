"""Tiny random-weight diffusers pipelines, built from configs and cached on disk; the
building blocks every tiny family shares; and the Stable Diffusion family (1.x/2.x, XL) with
its add-ons (LoRA, ControlNet, upscaler, depth2img, safety checker, single-file checkpoints).

Where a builder lives: Stable Diffusion and the shared parts here, other image families in
:mod:`tiny_image_models`, every video family in :mod:`tiny_video_models`, GGUF files in
:mod:`tiny_gguf_models`, and the diffusers -> original-checkpoint key mapping in
:mod:`ldm_convert`.

No test machine reaches the Hugging Face Hub, so tests build pipelines that are real in
every line of code but tiny in size (a few MB), save them with ``save_pretrained`` and load
them back through the same code paths users hit. Builds are cached under
``.test-fixtures/<library versions>/`` so only the first test session pays for them. Every
tokenizer is the byte-level CLIP one (no vocabulary downloads); pipelines that format prompts
with a chat template get a one-line template.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from ldm_convert import sd_to_ldm_state_dict

REPO_ROOT = Path(__file__).resolve().parent.parent


FIXTURE_ROOT = Path(os.environ.get("TINY_FIXTURE_DIR", REPO_ROOT / ".test-fixtures"))


FIXTURE_FORMAT = 1  # bump when a builder changes what it writes


def _versions_key() -> str:
    parts = [f"format={FIXTURE_FORMAT}"]
    for dist in ("torch", "diffusers", "transformers", "peft"):
        try:
            parts.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist}=none")
    return hashlib.sha1(";".join(parts).encode()).hexdigest()[:12]


def fixture_dir() -> Path:
    """The cache folder for fixtures built with the installed library versions."""
    return FIXTURE_ROOT / _versions_key()


def cached_build(name: str, builder: Callable[[Path], None]) -> Path:
    """Return ``fixture_dir()/name``, building it with ``builder(tmp)`` once, atomically."""
    target = fixture_dir() / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder per fixture across processes (pytest-xdist workers, a bench beside the
    # suite): the others wait, then find it complete. A complete fixture is never replaced,
    # so a process reading it cannot see it vanish.
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        tmp = target.parent / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        builder(tmp)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
        tmp.rename(target)
    return target


def byte_level_vocab() -> dict[str, int]:
    """A CLIP-style byte-level vocabulary: every byte char, the same with ``</w>``, specials."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable]
    # Bytes without a printable glyph map to code points above 255, as GPT-2/CLIP do.
    chars += [chr(256 + i) for i in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_clip_tokenizer(save_to: Path | None = None):
    """A CLIPTokenizer with no downloaded files (transformers 5 builds it from a dict)."""
    from transformers import CLIPTokenizer

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(save_to)
        # vocab.json + merges.txt keep the folder loadable by transformers 4.x too.
        (save_to / "vocab.json").write_text(json.dumps(vocab))
        (save_to / "merges.txt").write_text("#version: 0.2\n")
    return tokenizer


def tiny_clip_text_encoder(seed: int = 0, projection: bool = False, hidden: int = 32):
    """A 2-layer CLIP text encoder with hidden size ``hidden``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(byte_level_vocab()),
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=len(byte_level_vocab()) - 2,
        eos_token_id=len(byte_level_vocab()) - 1,
        pad_token_id=len(byte_level_vocab()) - 1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def tiny_unet(seed: int = 0, in_channels: int = 4, **extra):
    """The tiny SD 1.x UNet: 32/64 channels, one layer per block, cross-attention dim 32."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    config.update(extra)
    return UNet2DConditionModel(**config).eval()


def tiny_vae(seed: int = 0):
    """A tiny KL autoencoder (two blocks: 2x downscale, so 64 px images use 32 px latents)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ).eval()


def sd_ddim_scheduler():
    """DDIM with Stable Diffusion 1.x's published scheduler settings."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_sd_components(seed: int = 0) -> dict:
    """Components of a tiny StableDiffusionPipeline (no safety checker)."""
    scheduler = sd_ddim_scheduler()
    return {
        "unet": tiny_unet(seed),
        "scheduler": scheduler,
        "vae": tiny_vae(seed),
        "text_encoder": tiny_clip_text_encoder(seed),
        "tokenizer": tiny_clip_tokenizer(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def _build_sd(path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
    pipe.save_pretrained(path)
    # Rewrite the tokenizer so vocab.json/merges.txt sit beside tokenizer.json.
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def tiny_sd_path() -> Path:
    """Folder of a saved tiny StableDiffusionPipeline (about 6.5 MB)."""
    return cached_build("tiny-sd", _build_sd)


def _build_sd_with_safety_checker(path: Path) -> None:
    """Tiny SD 1.x as many Hub repos ship it: with a safety checker, here one that fires on
    every image (its concept thresholds are far below any similarity), which blacks it out."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    try:  # transformers 5 without torchvision: the PIL backend, imported directly
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "vocab_size": 1000},
        vision_config={"hidden_size": 32, "image_size": 32, "patch_size": 8,
                       "num_hidden_layers": 2, "num_attention_heads": 4,
                       "intermediate_size": 37},
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0)
        checker.special_care_embeds_weights.fill_(-10.0)
    components = {**tiny_sd_components(), "safety_checker": checker,
                  "feature_extractor": ImageProcessor(crop_size=32, size=32)}
    StableDiffusionPipeline(**components, requires_safety_checker=True).save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")
    index = json.loads((path / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def tiny_sd_with_safety_checker_path() -> Path:
    """Folder of the tiny SD pipeline with an always-firing safety checker."""
    return cached_build("tiny-sd-safety-checker", _build_sd_with_safety_checker)


def _build_tiny_autoencoder(path: Path) -> None:
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    # Two blocks of 8 channels: one 2x upsample, as the tiny SD VAE's 2x (TAESD: 8x).
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1),
                    latent_channels=4).save_pretrained(path)


def tiny_autoencoder_path() -> Path:
    """Folder of a tiny AutoencoderTiny (TAESD-like) for the tiny SD's 4 latent channels
    (a few KB): the ``preview_decoder`` of live previews."""
    return cached_build("tiny-autoencoder-tiny", _build_tiny_autoencoder)


LORA_TARGETS_UNET = ["to_k", "to_q", "to_v", "to_out.0"]


LORA_TARGETS_TEXT = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _build_lora(path: Path, seed: int, weight_name: str, text_encoder: bool) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    def lora_layers(model, targets: list[str]) -> dict:
        # init_lora_weights=False keeps lora_B random (not zero) so the adapter changes outputs.
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
        model.add_adapter(config)
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))

    unet_layers = lora_layers(tiny_unet(), LORA_TARGETS_UNET)
    text_layers = lora_layers(tiny_clip_text_encoder(), LORA_TARGETS_TEXT) if text_encoder else None
    StableDiffusionPipeline.save_lora_weights(
        path,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=text_layers,
        weight_name=weight_name,
    )


def tiny_lora_path() -> Path:
    """LoRA file (UNet + text encoder, rank 4, random non-zero B) for the tiny SD pipeline."""
    folder = cached_build(
        "tiny-lora", lambda p: _build_lora(p, 1, "tiny_lora.safetensors", text_encoder=True)
    )
    return folder / "tiny_lora.safetensors"


def tiny_lora2_path() -> Path:
    """A second, different LoRA file (UNet only) for the tiny SD pipeline: multi-adapter tests."""
    folder = cached_build(
        "tiny-lora2", lambda p: _build_lora(p, 2, "tiny_lora2.safetensors", text_encoder=False)
    )
    return folder / "tiny_lora2.safetensors"


def _build_controlnet(path: Path) -> None:
    import torch
    from diffusers import ControlNetModel

    # (16, 32) conditioning channels downsample the control image 2x, like the tiny VAE, so a
    # 64 px control image meets the 32 px latents.
    controlnet = ControlNetModel.from_unet(
        tiny_unet(), conditioning_embedding_out_channels=(16, 32)
    )
    # These convs are zero-initialised in a fresh ControlNet; randomise them so the control
    # image has a visible effect (the large std on the embedding's output beats the damping of
    # the random tiny UNet: two control images then differ by ~0.1 in [0, 1] pixel values).
    zero_convs = [
        (controlnet.controlnet_cond_embedding.conv_out, 3.0),
        *((conv, 0.3) for conv in controlnet.controlnet_down_blocks),
        (controlnet.controlnet_mid_block, 0.3),
    ]
    torch.manual_seed(3)
    with torch.no_grad():
        for conv, std in zero_convs:
            conv.weight.normal_(std=std)
            conv.bias.normal_(std=std)
    controlnet.save_pretrained(path)


def tiny_controlnet_path() -> Path:
    """Folder of a tiny ControlNetModel for the tiny SD UNet; control images are given at 64 px."""
    return cached_build("tiny-controlnet", _build_controlnet)


def _build_sd_upscale(path: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.08333)  # what the pipeline expects (x4 upscaler VAE)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=tiny_clip_text_encoder(),
        tokenizer=tiny_clip_tokenizer(),
        # 4 latent + 3 low-res image channels; the noise level is passed as a class label.
        unet=tiny_unet(in_channels=7, num_class_embeds=1000),
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        max_noise_level=350,
    )
    pipe.save_pretrained(path)
    tiny_clip_tokenizer(save_to=path / "tokenizer")


def tiny_sd_upscale_path() -> Path:
    """Folder of a tiny StableDiffusionUpscalePipeline; its 2-block VAE makes it a 2x upscaler."""
    return cached_build("tiny-sd-upscale", _build_sd_upscale)


def _normalise_ext(ext: str) -> str:
    return ext if ext.startswith(".") else "." + ext


def _write_checkpoint(state: dict, file: Path) -> None:
    import torch

    if file.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(file))
    else:  # .ckpt / .pt / .pth / .bin: a pickle, as the original LDM training code wrote them
        torch.save({"state_dict": state}, file)


def tiny_sd_single_file(ext: str = "safetensors") -> Path:
    """Tiny SD as one LDM-layout file (same weights as tiny_sd_path()); load with config=."""
    from diffusers import StableDiffusionPipeline

    ext = _normalise_ext(ext)
    name = f"tiny-sd{ext}"

    def build(path: Path) -> None:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path())
        _write_checkpoint(sd_to_ldm_state_dict(pipe), path / name)

    return cached_build(f"tiny-sd-single-file-{ext[1:]}", build) / name


def tiny_pickle_checkpoint(directory: Path | None = None, ext: str = ".ckpt") -> Path:
    """A loadable LDM pickle (torch.save) of tiny SD named ``tiny-sd<ext>``, in ``directory``."""
    ext = _normalise_ext(ext)
    if ext == ".safetensors":
        raise ValueError("tiny_pickle_checkpoint writes pickles; use tiny_sd_single_file()")
    cached = tiny_sd_single_file(ext)
    if directory is None:
        return cached
    file = Path(directory) / cached.name
    file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, file)
    return file


# The prompt itself: enough for pipelines that wrap prompts in a chat template.
PLAIN_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def chat_tokenizer():
    tokenizer = tiny_clip_tokenizer()
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def save_pipeline(pipe, path: Path, *tokenizer_folders: str, chat: bool = False) -> None:
    """save_pretrained, then vocab.json/merges.txt beside each tokenizer (as tiny_models does)."""
    pipe.save_pretrained(path)
    for folder in tokenizer_folders:
        tokenizer = tiny_clip_tokenizer(save_to=path / folder)
        if chat:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
            tokenizer.save_pretrained(path / folder)


def rename_processor(path: Path, component: str, class_name: str) -> None:
    """Name a PIL image processor as Hub checkpoints do (transformers picks its backend)."""
    index = json.loads((path / "model_index.json").read_text())
    index[component] = ["transformers", class_name]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def flux_like_vae(latent_channels: int, seed: int = 0):
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
    save_pipeline(pipe, path, "tokenizer", "tokenizer_2")


def tiny_sdxl_path() -> Path:
    """Folder of a tiny StableDiffusionXLPipeline (two 32-wide CLIP encoders)."""
    return cached_build("tiny-sdxl", _build_sdxl)


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
    save_pipeline(pipe, path, "tokenizer")
    rename_processor(path, "feature_extractor", "DPTImageProcessor")


def tiny_depth2img_path() -> Path:
    """Folder of a tiny StableDiffusionDepth2ImgPipeline (ViT DPT depth estimator at 32 px)."""
    return cached_build("tiny-depth2img", _build_depth2img)


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

"""Tiny random-weight diffusers pipelines, built from configs and cached on disk.

No test machine reaches the Hugging Face Hub, so tests build pipelines that are real in
every line of code but tiny in size (a few MB), save them with ``save_pretrained`` and load
them back through the same code paths users hit. Builds are cached under
``.test-fixtures/<library versions>/`` so only the first test session pays for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

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
    tmp = target.parent / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    builder(tmp)
    (tmp / ".complete").write_text("ok")
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is equivalent
        shutil.rmtree(tmp, ignore_errors=True)
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


# --------------------------------------------------------------------------------------
# Adapters and extra pipelines built on the tiny SD components
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Single-file (original LDM / A1111 layout) checkpoints
# --------------------------------------------------------------------------------------

_LDM_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_LDM_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename(key: str, prefixes: list[tuple[str, str, dict | None]]) -> str | None:
    for old, new, inner in prefixes:
        if key.startswith(old):
            rest = key[len(old) :]
            for inner_old, inner_new in (inner or {}).items():
                if rest.startswith(inner_old + "."):
                    rest = inner_new + rest[len(inner_old) :]
                    break
            return new + rest
    return None


def unet_to_ldm(state_dict: dict, config) -> dict:
    """Rename a diffusers UNet2DConditionModel state dict to the LDM ``model.diffusion_model``."""
    per_block = config["layers_per_block"]
    n_blocks = len(config["block_out_channels"])
    prefixes: list[tuple[str, str, dict | None]] = [
        ("time_embedding.linear_1.", "time_embed.0.", None),
        ("time_embedding.linear_2.", "time_embed.2.", None),
        ("class_embedding.", "label_emb.", None),  # num_class_embeds (the x4 upscaler)
        ("conv_in.", "input_blocks.0.0.", None),
        ("conv_norm_out.", "out.0.", None),
        ("conv_out.", "out.2.", None),
        ("mid_block.resnets.0.", "middle_block.0.", _LDM_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", None),
        ("mid_block.resnets.1.", "middle_block.2.", _LDM_RESNET),
    ]
    for i in range(n_blocks):
        for j in range(per_block):
            k = 1 + i * (per_block + 1) + j
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", _LDM_RESNET))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", None))
        k = 1 + i * (per_block + 1) + per_block
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{k}.0.op.", None))
        has_attention = any(key.startswith(f"up_blocks.{i}.attentions.") for key in state_dict)
        for j in range(per_block + 1):
            k = i * (per_block + 1) + j
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", _LDM_RESNET))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", None))
        k = i * (per_block + 1) + per_block
        upsampler = f"output_blocks.{k}.{2 if has_attention else 1}.conv."
        prefixes.append((f"up_blocks.{i}.upsamplers.0.conv.", upsampler, None))
    return _renamed(state_dict, prefixes, "model.diffusion_model.")


def vae_to_ldm(state_dict: dict, config) -> dict:
    """Rename a diffusers AutoencoderKL state dict to the LDM ``first_stage_model`` layout."""
    n_blocks = len(config["block_out_channels"])
    resnet = {"conv_shortcut": "nin_shortcut"}
    prefixes: list[tuple[str, str, dict | None]] = [
        ("quant_conv.", "quant_conv.", None),
        ("post_quant_conv.", "post_quant_conv.", None),
    ]
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.conv_in.", f"{part}.conv_in.", None),
            (f"{part}.conv_out.", f"{part}.conv_out.", None),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", resnet),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", resnet),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _LDM_VAE_ATTENTION),
        ]
    for i in range(n_blocks):
        up = n_blocks - 1 - i  # LDM numbers decoder blocks from the lowest resolution up
        prefixes += [
            (f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", None),
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", None),
            (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{up}.block.", None),
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample.", None),
        ]
    out = _renamed(state_dict, prefixes, "first_stage_model.")
    for key in list(out):
        if ".nin_shortcut." not in key and "conv_shortcut" in key:
            out[key.replace("conv_shortcut", "nin_shortcut")] = out.pop(key)
        if ".mid.attn_1." in key and key.endswith("weight") and out[key].ndim == 2:
            out[key] = out[key][:, :, None, None]  # LDM stores attention projections as 1x1 convs
    return out


def _renamed(state_dict: dict, prefixes: list, prefix: str) -> dict:
    out = {}
    for key, value in state_dict.items():
        new = _rename(key, prefixes)
        if new is None:
            raise KeyError(f"no LDM name for {key}")
        out[prefix + new] = value.detach().clone().contiguous()
    return out


def sd_to_ldm_state_dict(pipe) -> dict:
    """The state dict of an SD 1.x pipeline in the original single-file (LDM/A1111) layout."""
    state = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.``); LDM files keep it.
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value.detach().clone().contiguous()
    return state


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

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


def tiny_sd_components(seed: int = 0) -> dict:
    """Components of a tiny StableDiffusionPipeline (no safety checker)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
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

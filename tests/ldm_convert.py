"""diffusers -> original (LDM) state-dict keys for the tiny SD pipeline, so tests can write
single-file checkpoints that ``from_single_file`` reads back as users' files are read."""

from __future__ import annotations

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

"""Cheap previews of a picture as it forms: the latents mapped to RGB by a linear map.

Each family's VAE latent space is close enough to linear in colour that a 3-column matrix
(plus a bias) gives a recognisable thumbnail at latent resolution (1/8 of the output, so
never larger than it) for the cost of one small matrix product. The factors below are the
published per-family fits (the ones ComfyUI's and A1111's live previews use), applied to the
latents as the denoising loop holds them (scaled, shifted or normalised as the pipeline
keeps them). A family without known factors gets no preview. A model whose YAML names a tiny
autoencoder (``preview_decoder``, loading/preview_decoder.py) gets its decoded picture
instead: sharper, at output resolution, for one small decoder pass.
"""

from __future__ import annotations

import io
from typing import Any

RGB = tuple[float, float, float]

SD15: tuple[RGB, ...] = (
    (0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
SDXL: tuple[RGB, ...] = (
    (0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
SDXL_BIAS: RGB = (0.1084, -0.0175, -0.0011)
SD3: tuple[RGB, ...] = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189))
SD3_BIAS: RGB = (0.2394, 0.2135, 0.1925)
FLUX: tuple[RGB, ...] = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778))
FLUX_BIAS: RGB = (-0.0329, -0.0718, -0.0851)
WAN21: tuple[RGB, ...] = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861))
WAN21_BIAS: RGB = (-0.1835, -0.0868, -0.3360)
HUNYUAN_VIDEO: tuple[RGB, ...] = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282),
    (0.0108, -0.0250, -0.0765), (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639),
    (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400), (-0.0696, -0.0595, -0.0894),
    (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727),
    (0.0249, -0.0469, -0.1703))
HUNYUAN_VIDEO_BIAS: RGB = (0.0259, -0.0192, -0.0761)
NO_BIAS: RGB = (0.0, 0.0, 0.0)

# (pipeline class name contains, latent channels) -> factors, bias; first match wins.
FAMILIES: tuple[tuple[str, int, tuple[RGB, ...], RGB], ...] = (
    ("Flux", 16, FLUX, FLUX_BIAS),
    ("StableDiffusion3", 16, SD3, SD3_BIAS),
    ("Wan", 16, WAN21, WAN21_BIAS),
    ("HunyuanVideo", 16, HUNYUAN_VIDEO, HUNYUAN_VIDEO_BIAS),
    ("XL", 4, SDXL, SDXL_BIAS),
    ("", 4, SD15, NO_BIAS),  # SD 1.x / 2.x and other 4-channel SD VAEs
)


def factors_for(pipe: Any, channels: int) -> tuple[tuple[RGB, ...], RGB] | None:
    """The linear map for this pipeline's latents, or None when no published one fits."""
    name = type(pipe).__name__
    for part, wanted, factors, bias in FAMILIES:
        if part in name and channels == wanted:
            return factors, bias
    return None


def _unpacked(pipe: Any, latents: Any, width: int, height: int) -> Any:
    """Flux-style packed latents (seq, 64) back to (16, h, w); others as they are."""
    if latents.ndim != 2:
        return latents
    unpack = getattr(type(pipe), "_unpack_latents", None)
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    if unpack is None or not (width and height):
        return None
    return unpack(latents[None], height, width, scale)[0]


def decoded_rgb(decoder: Any, latents: Any) -> Any:
    """Latents (C, H, W) decoded by a tiny autoencoder (the model's ``preview_decoder``) as
    (H', W', 3) values in 0..1, on the decoder's device. The latents are unscaled as a
    pipeline does before its VAE decodes them, with the decoder's own factors (TAESD: 1 and
    0, so SD's scaled latents go in as they are)."""
    config = decoder.config
    scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
    latents = latents.detach()[None].to(decoder.device, decoder.dtype) / scale + shift
    image = decoder.decode(latents, return_dict=False)[0][0].float()
    return (image / 2 + 0.5).permute(1, 2, 0)  # decoders give -1..1, channels first


def _png(pixels: Any, width: int, height: int) -> bytes:
    """(H, W, 3) uint8 as PNG, shrunk to fit within the output when it is larger."""
    from PIL import Image

    picture = Image.fromarray(pixels, "RGB")
    if width and height and (picture.width > width or picture.height > height):
        picture.thumbnail((width, height))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def preview_png(pipe: Any, latents: Any, width: int = 0, height: int = 0,
                decoder: Any = None) -> bytes | None:
    """One request's latents (C, H, W), (C, F, H, W) or packed (seq, C*4) as a PNG thumbnail
    no larger than the output: decoded by ``decoder`` (an ``AutoencoderTiny``) when the model
    has one, else mapped at latent resolution; None when the family has no known map."""
    import numpy as np
    import torch

    with torch.no_grad():
        latents = _unpacked(pipe, latents, width, height)
        if latents is None or latents.ndim not in (3, 4):
            return None
        if latents.ndim == 4:  # video: (C, F, H, W), the latest frame
            latents = latents[:, -1]
        if decoder is not None:
            rgb = decoded_rgb(decoder, latents)
            pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            return _png(np.ascontiguousarray(pixels), width, height)
        found = factors_for(pipe, int(latents.shape[0]))
        if found is None:
            return None
        factors, bias = found
        # On the latents' device: only the small RGB thumbnail crosses to the CPU.
        device = latents.device
        matrix = torch.tensor(factors, dtype=torch.float32, device=device)
        rgb = torch.einsum("chw,cr->hwr", latents.detach().float(), matrix)
        rgb = (rgb + torch.tensor(bias, device=device) + 1.0) / 2.0
        pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return _png(np.ascontiguousarray(pixels), width, height)

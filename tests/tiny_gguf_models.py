"""Tiny transformers written as GGUF files by the tests, with the ``gguf`` package.

GGUF files for diffusion models (city96's and others) hold one transformer; diffusers reads
them with ``from_single_file`` and its converter for the family, so the tensor names must be
a layout that converter accepts. Two families are built here, both from the tiny pipelines
of :mod:`tiny_image_models` and :mod:`tiny_video_models` (which then serve as the ``gguf_base``):

* **Flux, in diffusers' own layout.** Diffusers' converter from the original BFL layout
  hard-codes FLUX.1's width (3072) when it splits the fused single-block projections, so a
  tiny Flux cannot go through that layout; ``from_single_file`` takes a file whose names are
  already the model's own as it is (its ``_should_convert_state_dict_to_diffusers`` check),
  which is how some Flux GGUF exports are written. Flux generates images.
* **Wan, in the original Wan layout** (``blocks.0.self_attn.q.weight``...), the layout of the
  published Wan GGUF files: Wan's converter only renames keys (no size is assumed), so the
  tiny transformer round-trips through it; the builder checks that it does.

Quantized types: GGML quantizes rows in blocks of 32 values, so, as the real exporters do,
only 2-D weights whose rows are a multiple of 32 are quantized; the rest (biases, norms,
odd-sized projections) are stored as floats.
"""

from __future__ import annotations

from pathlib import Path

from tiny_image_models import tiny_flux_path
from tiny_models import cached_build
from tiny_video_models import tiny_wan_path

# diffusers key fragment -> original Wan key fragment, applied in order: the inverse of the
# renames in diffusers' convert_wan_transformer_to_diffusers for a text-to-video model.
_WAN_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn2", "cross_attn"),
    ("attn1", "self_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("norm2", "norm__swap"),
    ("norm3", "norm2"),
    ("norm__swap", "norm3"),
    ("proj_out", "head.head"),
]


def _wan_original_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    key = key.replace("scale_shift_table", "modulation")
    for new, old in _WAN_TO_ORIGINAL:
        key = key.replace(new, old)
    return key


def wan_to_original(state: dict) -> dict:
    """A diffusers WanTransformer3DModel state dict in the original Wan checkpoint layout."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = {_wan_original_key(k): v for k, v in state.items()}
    back = convert_wan_transformer_to_diffusers(dict(original))
    if set(back) != set(state):  # the fixture must be what diffusers' converter reads
        raise AssertionError(f"Wan layout does not round-trip: {sorted(set(back) ^ set(state))}")
    return original


def write_gguf(state: dict, file: Path, qtype: str, arch: str) -> dict[str, int]:
    """Write ``state`` to ``file``; 2-D weights with rows of a multiple of 32 values as
    ``qtype`` (a GGMLQuantizationType name: Q8_0, Q4_0, BF16, F16...), the rest as F32.

    Returns how many tensors were written per type name.
    """
    import gguf
    import numpy as np

    wanted = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(file), arch=arch)
    counts: dict[str, int] = {}
    for name, tensor in state.items():
        array = tensor.detach().float().contiguous().numpy()
        kind = wanted if array.ndim == 2 and array.shape[-1] % 32 == 0 else None
        if kind is None:
            writer.add_tensor(name, array.astype(np.float32))
            kind_name = "F32"
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
            kind_name = "F16"
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
            kind_name = kind.name
        counts[kind_name] = counts.get(kind_name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if len(counts) < 2 and qtype not in counts:
        raise AssertionError(f"nothing was stored as {qtype}: {counts}")
    return counts


def tiny_flux_gguf(qtype: str = "Q8_0") -> Path:
    """The tiny Flux transformer as ``tiny-flux-<qtype>.gguf`` (diffusers key names);
    its base is tiny_flux_path()."""
    from diffusers import FluxTransformer2DModel

    name = f"tiny-flux-{qtype}.gguf"

    def build(path: Path) -> None:
        transformer = FluxTransformer2DModel.from_pretrained(tiny_flux_path(),
                                                             subfolder="transformer")
        write_gguf(transformer.state_dict(), path / name, qtype, "flux")

    return cached_build(f"tiny-flux-gguf-{qtype}", build) / name


def tiny_wan_gguf(qtype: str = "Q8_0") -> Path:
    """The tiny Wan transformer as ``tiny-wan-<qtype>.gguf`` in the original Wan layout;
    its base is tiny_wan_path()."""
    from diffusers import WanTransformer3DModel

    name = f"tiny-wan-{qtype}.gguf"

    def build(path: Path) -> None:
        transformer = WanTransformer3DModel.from_pretrained(tiny_wan_path(),
                                                            subfolder="transformer")
        write_gguf(wan_to_original(transformer.state_dict()), path / name, qtype, "wan")

    return cached_build(f"tiny-wan-gguf-{qtype}", build) / name

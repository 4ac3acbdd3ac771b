"""Prompt weighting for SD3 and Flux (``COMPEL=1``, A1111 syntax ``(word:1.3)``): the parser,
the direction of the change in the embeddings on tiny real pipelines in this process, and
long prompts beyond one CLIP chunk. One weighted generation over gRPC on each family is in
tests/e2e/test_weighted_generation.py."""

from __future__ import annotations

import pytest
import torch
from tiny_image_models import tiny_chroma_path, tiny_flux_path, tiny_sd3_path

from diffusers_backend.prompts import build_prompt_kwargs
from diffusers_backend.prompts.weighted import (
    Fragment,
    parse_weighted_prompt,
    plain_text,
    weighted_prompt_kwargs,
    weighting_family,
)

# ------------------------------------------------------------------------------ parser


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat:1.3) sits", [("a ", 1.0), ("cat", 1.3), (" sits", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
    ("a ((cat))", [("a ", 1.0), ("cat", 1.21)]),
    ("a [cat]", [("a ", 1.0), ("cat", 1 / 1.1)]),
    ("a (red (cat:2):1.5)", [("a ", 1.0), ("red ", 1.5), ("cat", 3.0)]),
    ("a (cat)1.3 dog", [("a ", 1.0), ("cat", 1.3), (" dog", 1.0)]),  # compel's form
    (r"a \(cat\) 1:2", [("a (cat) 1:2", 1.0)]),
    ("a (cat:0)", [("a ", 1.0), ("cat", 0.0)]),
    ("a (cat", [("a ", 1.0), ("cat", 1.1)]),  # unclosed: still weighted, as in A1111
    ("a cat)", [("a cat)", 1.0)]),
])
def test_parse_weighted_prompt(prompt, expected):
    got = [(f.text, round(f.weight, 6)) for f in parse_weighted_prompt(prompt)]
    assert got == [(text, round(weight, 6)) for text, weight in expected]


def test_plain_text_drops_the_syntax():
    assert plain_text("a (red:1.4) [cube] ((here))") == "a red cube here"
    assert parse_weighted_prompt("") == []
    assert Fragment("x", 1.0).weight == 1.0


# ---------------------------------------------------------------------- tiny pipelines


@pytest.fixture(scope="module")
def sd3(single_torch_thread):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path())


@pytest.fixture(scope="module")
def flux(single_torch_thread):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(tiny_flux_path())


@pytest.fixture(scope="module")
def chroma(single_torch_thread):
    from diffusers import ChromaPipeline

    return ChromaPipeline.from_pretrained(tiny_chroma_path())


def test_families(sd3, flux, chroma, tiny_sd_pipeline):
    assert weighting_family(sd3) == "sd3"
    assert weighting_family(flux) == "flux"
    assert weighting_family(chroma) == "chroma"
    assert weighting_family(tiny_sd_pipeline) is None
    assert weighted_prompt_kwargs(tiny_sd_pipeline, "a (cat:1.5)", "") is None


def test_unweighted_prompts_are_left_to_the_pipeline(sd3, flux):
    for pipe in (sd3, flux):
        assert weighted_prompt_kwargs(pipe, "a red cube", "blurry") is None


def test_weight_one_equals_the_pipelines_own_encoding(sd3, flux):
    with torch.no_grad():
        own = sd3.encode_prompt("a red cube", "a red cube", "a red cube",
                                negative_prompt="blurry", negative_prompt_2="blurry",
                                negative_prompt_3="blurry", do_classifier_free_guidance=True)
    ours = weighted_prompt_kwargs(sd3, "a (red:1.0) cube", "(blurry:1)", force=True)
    assert torch.allclose(ours["prompt_embeds"], own[0], atol=1e-5)
    assert torch.allclose(ours["negative_prompt_embeds"], own[1], atol=1e-5)
    assert torch.allclose(ours["pooled_prompt_embeds"], own[2], atol=1e-5)
    assert torch.allclose(ours["negative_pooled_prompt_embeds"], own[3], atol=1e-5)

    with torch.no_grad():
        embeds, pooled, _ = flux.encode_prompt("a red cube", "a red cube")
    ours = weighted_prompt_kwargs(flux, "a (red:1.0) cube", "", force=True)
    assert torch.allclose(ours["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(ours["pooled_prompt_embeds"], pooled, atol=1e-5)
    assert "negative_prompt_embeds" not in ours  # no negative: Flux runs without true CFG


def test_sd3_without_t5_gets_zeros_in_its_place(sd3):
    from diffusers import StableDiffusion3Pipeline

    no_t5 = StableDiffusion3Pipeline(**{**sd3.components, "text_encoder_3": None,
                                        "tokenizer_3": None})
    with torch.no_grad():
        own = no_t5.encode_prompt("a red cube", "a red cube", "a red cube",
                                  do_classifier_free_guidance=True)
    ours = weighted_prompt_kwargs(no_t5, "a (red:1) cube", "", force=True)
    assert torch.allclose(ours["prompt_embeds"], own[0], atol=1e-5)
    assert ours["prompt_embeds"][:, 77:].abs().sum() == 0
    weighted = weighted_prompt_kwargs(no_t5, "a (red:1.5) cube", "")
    assert not torch.allclose(weighted["prompt_embeds"], own[0])


def test_chroma_weight_one_equals_its_own_encoding(chroma):
    with torch.no_grad():
        embeds, mask = chroma._get_t5_prompt_embeds("a red cube")
        neg, neg_mask = chroma._get_t5_prompt_embeds("")
    ours = weighted_prompt_kwargs(chroma, "a (red:1.0) cube", "", force=True)
    assert torch.allclose(ours["prompt_embeds"], embeds, atol=1e-5)
    assert torch.equal(ours["prompt_attention_mask"], mask)
    assert torch.allclose(ours["negative_prompt_embeds"], neg, atol=1e-5)
    assert torch.equal(ours["negative_prompt_attention_mask"], neg_mask)


def _token_positions(tokenizer, before: str, word: str) -> list[int]:
    """Where ``word``'s tokens sit after ``before`` (and the start token, if any)."""
    start = len(tokenizer(before, add_special_tokens=False).input_ids)
    count = len(tokenizer(word, add_special_tokens=False).input_ids)
    bos = 1 if tokenizer("", add_special_tokens=True).input_ids[:1] == [
        tokenizer.bos_token_id] else 0
    return list(range(bos + start, bos + start + count))


@pytest.mark.parametrize("family", ["sd3", "flux", "chroma"])
def test_the_weighted_tokens_move_with_the_weight(family, sd3, flux, chroma):
    """Only the weighted word's tokens change: ``empty + w * (plain - empty)``, so their
    distance from the empty prompt's embedding grows with the weight (0 = the empty prompt's
    token, 1 = unchanged)."""
    pipe = {"sd3": sd3, "flux": flux, "chroma": chroma}[family]
    plain = weighted_prompt_kwargs(pipe, "a red cube", "", force=True)["prompt_embeds"]
    empty = weighted_prompt_kwargs(pipe, "", "", force=True)["prompt_embeds"]
    tokenizer = getattr(pipe, {"sd3": "tokenizer_3", "flux": "tokenizer_2",
                               "chroma": "tokenizer"}[family])
    offset = 77 if family == "sd3" else 0  # SD3: T5 after the 77 CLIP tokens; Flux: T5 only
    red = [offset + i for i in _token_positions(tokenizer, "a ", "red")]
    if family == "sd3":  # the CLIP part (both CLIPs, side by side) is weighted too
        red = _token_positions(sd3.tokenizer, "a ", "red") + red
    others = [i for i in range(plain.shape[1]) if i not in red]
    distances, changes = [], []
    for weight in (0.0, 0.5, 1.0, 1.5, 2.0):
        embeds = weighted_prompt_kwargs(pipe, f"a (red:{weight}) cube", "",
                                        force=True)["prompt_embeds"]
        assert embeds.shape == plain.shape
        assert torch.equal(embeds[:, others], plain[:, others])  # the rest is untouched
        expected = empty[:, red] + weight * (plain[:, red] - empty[:, red])
        assert torch.allclose(embeds[:, red], expected, atol=1e-5)
        distances.append(float((embeds[:, red] - empty[:, red]).norm()))
        changes.append(float((embeds[:, red] - plain[:, red]).norm()))
    assert distances == sorted(distances) and distances[0] < 1e-5 < distances[-1]
    assert changes[2] == 0.0  # weight 1: exactly the plain prompt
    assert changes[3] < changes[4] and changes[1] < changes[0]


def test_long_sd3_prompts_are_chunked_not_truncated(sd3):
    words = " ".join(["cube"] * 60)  # far beyond 75 CLIP tokens with the byte tokenizer
    kwargs = weighted_prompt_kwargs(sd3, words, "")
    assert kwargs is not None  # long: encoded here even without weights
    clip_tokens = kwargs["prompt_embeds"].shape[1] - 256  # T5 part: max_sequence_length
    assert clip_tokens % 77 == 0 and clip_tokens > 77
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    tail = kwargs["prompt_embeds"][:, 77:clip_tokens]
    assert tail.abs().sum() > 0  # the words after the first chunk are encoded


def test_build_prompt_kwargs_uses_it_with_compel_on(sd3):
    kwargs = build_prompt_kwargs(sd3, "a (red:1.5) cube", "", use_compel=True, clip_skip=0)
    assert set(kwargs) == {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                           "negative_pooled_prompt_embeds"}
    assert build_prompt_kwargs(sd3, "a (red:1.5) cube", "", use_compel=False,
                               clip_skip=0) == {"prompt": "a (red:1.5) cube"}

"""Acceleration options over gRPC on tiny pipelines: step caches, torchao quantization,
regional compilation with its persistent cache, and the refusals where one cannot apply.

A cache that "works" must have reused something: an image that equals the uncached one
would mean no step was skipped (random tiny weights change a lot between steps, see
docs/acceleration.md), so each cache test asserts a difference, and that the same request
twice gives the same image (the cache starts afresh at every generation).
"""

from __future__ import annotations

import re
import time

import pytest
from features_support import free, load_ok
from harness import backend_pb2, mean_diff, same, start_backend
from tiny_gguf_models import tiny_flux_gguf
from tiny_image_models import tiny_flux_path

pytestmark = pytest.mark.usefixtures("free_backend_after")

FLUX_STEPS = 8


def _sd_image(backend, dst, steps=5, **fields):
    """5 steps: with cache_interval 2 a generation that did not restart the count would
    begin with a reuse step (5 % 2 == 1), showing the previous request's features."""
    result = backend.image(dst, seed=7, step=steps, **fields)
    assert result.success, result.message
    return dst


def _flux_image(backend, dst):
    result = backend.image(dst, seed=3, step=FLUX_STEPS, width=32, height=32)
    assert result.success, result.message
    return dst


def _refused(backend, model, *options, **fields):
    result = backend.load(model, Options=list(options), **fields)
    assert not result.success, f"{options} loaded: {result.message}"
    return result.message


# -- caches ------------------------------------------------------------------------------------
def test_deepcache_reuses_unet_features_and_restarts_at_every_request(backend, tiny_sd,
                                                                      tmp_path):
    load_ok(backend, tiny_sd)
    plain = _sd_image(backend, tmp_path / "plain.png")
    load_ok(backend, tiny_sd, Options=["cache:deepcache", "cache_interval:2"])
    assert "cache deepcache (interval 2)" in backend.log()
    first = _sd_image(backend, tmp_path / "cached.png")
    again = _sd_image(backend, tmp_path / "cached-again.png")
    assert not same(plain, first), "no step reused the UNet's deep features"
    assert same(first, again), "the second request started from the first one's features"
    assert mean_diff(plain, first) < 40


def test_deepcache_interval_one_computes_every_step(backend, tiny_sd, tmp_path):
    """Interval 1 means a full UNet at every step: the uncached image, bit for bit."""
    load_ok(backend, tiny_sd)
    plain = _sd_image(backend, tmp_path / "plain.png")
    load_ok(backend, tiny_sd, Options=["cache:deepcache", "cache_interval:1"])
    assert same(plain, _sd_image(backend, tmp_path / "interval1.png"))


@pytest.mark.parametrize("options", [
    ("cache:taylorseer", "cache_interval:2"),
    ("cache:first_block", "cache_threshold:5"),  # so high that every step after 1 reuses
    ("cache:faster",),
    ("cache:pab",),
])
def test_transformer_caches_change_the_flux_image_and_restart_per_request(backend, tmp_path,
                                                                          options):
    flux = tiny_flux_path()
    load_ok(backend, flux)
    plain = _flux_image(backend, tmp_path / "plain.png")
    result = load_ok(backend, flux, Options=list(options))
    name = options[0].split(":")[1]
    assert f"cache {name}" in backend.log(), result.message
    first = _flux_image(backend, tmp_path / "cached.png")
    again = _flux_image(backend, tmp_path / "cached-again.png")
    assert not same(plain, first), f"{name} reused nothing"
    assert same(first, again)


def test_first_block_cache_with_a_tiny_threshold_never_reuses(backend, tmp_path):
    """The threshold decides: at 1e-6 every step computes, so the image is the uncached one."""
    flux = tiny_flux_path()
    load_ok(backend, flux)
    plain = _flux_image(backend, tmp_path / "plain.png")
    load_ok(backend, flux, Options=["cache:first_block", "cache_threshold:0.000001"])
    assert same(plain, _flux_image(backend, tmp_path / "strict.png"))


def test_a_transformer_cache_on_a_unet_is_refused_pointing_at_deepcache(backend, tiny_sd):
    message = _refused(backend, tiny_sd, "cache:taylorseer")
    assert "cache:taylorseer cannot apply to StableDiffusionPipeline" in message
    assert "cache:deepcache" in message


def test_deepcache_on_a_transformer_is_refused(backend):
    message = _refused(backend, tiny_flux_path(), "cache:deepcache")
    assert "cache:deepcache cannot apply to FluxPipeline" in message and "UNet" in message


def test_an_unknown_cache_or_a_misplaced_knob_is_refused_naming_the_option(backend, tiny_sd):
    message = _refused(backend, tiny_sd, "cache:turbo")
    assert "unknown cache 'turbo'" in message and "deepcache" in message
    message = _refused(backend, tiny_sd, "cache:deepcache", "cache_threshold:0.1")
    assert "cache_threshold does not apply to cache:deepcache" in message
    message = _refused(backend, tiny_sd, "cache:deepcache", "cache_interval:0")
    assert "cache_interval must be a whole number of steps" in message


# -- quantization ------------------------------------------------------------------------------
def test_int8_weight_only_quantizes_the_unet_and_stays_close(backend, tiny_sd, tmp_path):
    load_ok(backend, tiny_sd)
    plain = _sd_image(backend, tmp_path / "plain.png")
    load_ok(backend, tiny_sd, Options=["quantize:int8wo"])
    found = re.search(r"unet quantized \(int8wo, torchao: (\d+) Linear layers\)", backend.log())
    assert found and int(found.group(1)) > 10
    quantized = _sd_image(backend, tmp_path / "int8.png")
    assert not same(plain, quantized), "int8 weights computed exactly like fp32 ones"
    assert mean_diff(plain, quantized) < 10


def test_fp8_without_a_capable_gpu_is_refused(backend, tiny_sd):
    message = _refused(backend, tiny_sd, "quantize:fp8")
    assert "quantize:fp8 refused" in message and "compute capability >= 8.9" in message


def test_quantize_on_a_gguf_transformer_is_refused(backend):
    file = tiny_flux_gguf("Q8_0")
    message = _refused(backend, file.name, "quantize:int8wo",
                       f"gguf_base:{tiny_flux_path()}", ModelFile=str(file),
                       ModelPath=str(file.parent))
    assert "quantize:int8wo cannot apply" in message and "GGUF-quantized already" in message


def test_an_unknown_quantize_mode_is_refused(backend, tiny_sd):
    message = _refused(backend, tiny_sd, "quantize:int4")
    assert "unknown quantize 'int4'" in message and "int8wo" in message


# -- compilation -------------------------------------------------------------------------------
def test_regional_compile_compiles_the_repeated_blocks_only(backend, tiny_sd, tmp_path):
    """The ``eager`` backend checks the wiring (which modules, warm-up) without codegen."""
    load_ok(backend, tiny_sd)
    plain = _sd_image(backend, tmp_path / "plain.png")
    load_ok(backend, tiny_sd, Options=["compile_regional:true", "compile_backend:eager"])
    log = backend.log()
    assert "unet blocks BasicTransformerBlock compiled (eager)" in log and "warmed up in" in log
    assert same(plain, _sd_image(backend, tmp_path / "regional.png"))


def _timed_load(server, model, options):
    """LoadModel with room for a first compile on a busy machine (the harness allows 180 s)."""
    started = time.perf_counter()
    result = server.stub.LoadModel(backend_pb2.ModelOptions(Model=str(model), Options=options),
                                   timeout=1200)
    assert result.success, result.message
    return time.perf_counter() - started


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two inductor warm-ups; the first took 4-9 minutes on a busy box
def test_the_compile_cache_makes_the_next_start_much_faster(tiny_sd, tmp_path):
    """Two server processes, one after the other, on one DIFFUSERS_COMPILE_CACHE_DIR: the
    second LoadModel of the same compiled model finds its kernels there, so its warm-up
    (where compilation happens) is much shorter. Real inductor code generation (a C++
    compiler): one to several minutes on 2 cores. Warm-up times are compared rather than
    whole LoadModel times, which also hold weight loading and a busy machine's noise."""
    cache = tmp_path / "compile-cache"
    options = ["compile_regional:true", "width:64", "height:64"]
    warm_ups, loads = [], []
    for run in range(2):
        server = start_backend(tmp_path, env={"DIFFUSERS_COMPILE_CACHE_DIR": str(cache)})
        try:
            loads.append(_timed_load(server, tiny_sd, options))
            log = server.log()
            assert f"cache {cache}" in log
            warm_ups.append(float(re.findall(r"warmed up in ([\d.]+)s", log)[-1]))
            assert _sd_image(server, tmp_path / f"run{run}.png").exists()
        finally:
            free(server)
            server.stop()
    assert any(cache.glob("fxgraph/*")), "inductor wrote no compiled graph to the cache"
    assert warm_ups[1] * 2 < warm_ups[0], (
        f"warm-up {warm_ups[0]:.1f}s then {warm_ups[1]:.1f}s; LoadModel {loads[0]:.1f}s "
        f"then {loads[1]:.1f}s")

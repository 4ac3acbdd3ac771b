"""The live progress hub (engine/progress.py) and the latent previews (engine/previews.py),
in process: bounded watcher queues, filters, the no-watcher path and the linear maps."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from diffusers_backend.engine import previews
from diffusers_backend.engine.progress import Hub, Watcher, call_step, running
from diffusers_backend.errors import Cancelled, InvalidArgument


def plan(dst: str, steps: int = 4, **options):
    spec = SimpleNamespace(options=options)
    return SimpleNamespace(job=SimpleNamespace(dst=dst), steps=steps, width=64, height=64,
                           loaded=SimpleNamespace(spec=spec))


def drain(watcher: Watcher) -> list:
    events = []
    while (event := watcher.get(0)) is not None:
        events.append(event)
    return events


def test_a_watcher_that_never_reads_keeps_only_the_newest_events():
    hub = Hub()
    stalled = hub.watch(maxlen=8)
    track = hub.queued(plan("/out/a.png", steps=1000))
    started = time.perf_counter()
    for step in range(1, 1001):
        hub.step(track, step, 1000)
    assert time.perf_counter() - started < 2.0  # never waits for the reader
    events = drain(stalled)
    assert [e.step for e in events] == list(range(993, 1001))
    assert stalled.dropped == 1001 + 1 - 8  # queued, started, 1000 steps; 8 kept


def test_filters_and_ends():
    hub = Hub()
    mine, everyone = hub.watch("/out/mine.png"), hub.watch()
    a, b = hub.queued(plan("/out/mine.png")), hub.queued(plan("/out/other.png"))
    hub.started(a)
    hub.step(a, 1, 4)
    hub.finished(a, "image written")
    hub.finished(b, error=Cancelled("request cancelled by the client"))
    assert [e.stage for e in drain(mine)] == ["queued", "started", "step", "done"]
    seen = [(e.dst, e.stage) for e in drain(everyone)]
    assert ("/out/other.png", "queued") in seen and seen[-1] == ("/out/other.png", "cancelled")
    c = hub.queued(plan("/out/c.png"))
    hub.finished(c, error=InvalidArgument("bad"))
    hub.finished(c, "twice")  # a request ends once
    assert [e.stage for e in drain(everyone)] == ["queued", "failed"]
    assert hub.snapshot() == []


def test_queue_positions_count_the_requests_waiting():
    hub = Hub()
    watcher = hub.watch()
    first, second = hub.queued(plan("/out/1.png")), hub.queued(plan("/out/2.png"))
    hub.started(first)
    third = hub.queued(plan("/out/3.png"))
    positions = [e.queue_position for e in drain(watcher) if e.stage == "queued"]
    assert positions == [1, 2, 2]
    assert [e.dst for e in hub.snapshot()] == ["/out/1.png", "/out/2.png", "/out/3.png"]
    del second, third


def test_nobody_watching_publishes_nothing(monkeypatch):
    hub = Hub()
    track = hub.queued(plan("/out/a.png"))
    published = []
    monkeypatch.setattr(hub, "_publish", lambda *args: published.append(args))
    monkeypatch.setattr(hub, "_preview", lambda *args: pytest.fail("preview made"))
    for step in range(1, 5):
        hub.step(track, step, 4, pipe=object(), latents=torch.zeros(4, 8, 8))
    assert published == [] and track.step == 4


def test_previews_only_for_watchers_that_ask_and_every_n_steps():
    hub = Hub()
    plain, with_previews = hub.watch(), hub.watch(previews=True)
    pipe = type("StableDiffusionPipeline", (), {})()
    track = hub.queued(plan("/out/a.png", steps=5, preview_every=2))
    for step in range(1, 6):
        hub.step(track, step, 5, pipe, torch.randn(4, 8, 8))
    assert not any(e.preview_png for e in drain(plain))
    made = [e.step for e in drain(with_previews) if e.preview_png]
    assert made == [2, 4, 5]  # every 2 steps and the last


def test_call_step_gives_each_batch_member_its_own_row():
    import diffusers_backend.engine.progress as progress

    hub = Hub()
    watcher = hub.watch(previews=True)
    original = progress.HUB
    progress.HUB = hub
    try:
        tracks = [hub.queued(plan(f"/out/{i}.png", steps=2)) for i in range(2)]
        pipe = type("StableDiffusionPipeline", (), {"_num_timesteps": 2})()
        latents = torch.stack([torch.full((4, 8, 8), -3.0), torch.full((4, 8, 8), 3.0)])
        running(tracks)
        call_step(pipe, 0, {"latents": latents})
        running([])
        call_step(pipe, 1, {"latents": latents})  # no call running: nobody's step
    finally:
        progress.HUB = original
    steps = [e for e in drain(watcher) if e.stage == "step"]
    assert [(e.dst, e.step, e.steps) for e in steps] == [("/out/0.png", 1, 2),
                                                        ("/out/1.png", 1, 2)]
    dark, light = (Image.open(io.BytesIO(e.preview_png)).getpixel((0, 0)) for e in steps)
    assert sum(dark) < sum(light)  # each preview from its own row


def test_sd15_map_matches_the_published_factors():
    pipe = type("StableDiffusionPipeline", (), {})()
    latents = torch.zeros(4, 2, 3)
    latents[0] = 1.0
    picture = Image.open(io.BytesIO(previews.preview_png(pipe, latents)))
    assert picture.size == (3, 2)
    expected = tuple(round((f + 1) / 2 * 255) for f in previews.SD15[0])
    assert picture.getpixel((0, 0)) == expected


def test_families():
    named = {name: type(name, (), {})() for name in (
        "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline",
        "WanPipeline", "KandinskyPipeline")}
    assert previews.factors_for(named["StableDiffusionXLPipeline"], 4)[0] is previews.SDXL
    assert previews.factors_for(named["StableDiffusion3Pipeline"], 16)[0] is previews.SD3
    assert previews.factors_for(named["WanPipeline"], 16)[0] is previews.WAN21
    assert previews.factors_for(named["KandinskyPipeline"], 16) is None
    # Flux's packed latents (seq, 64) are unpacked to (16, h, w) first.
    from diffusers import FluxPipeline

    flux = FluxPipeline.__new__(FluxPipeline)
    flux.vae_scale_factor = 8
    packed = torch.randn(16, 64)  # a 64x64 output: 8x8 latents, 4x4 patches of 2x2
    picture = Image.open(io.BytesIO(previews.preview_png(flux, packed, 64, 64)))
    assert picture.size == (8, 8)
    video = torch.randn(16, 3, 4, 6)  # Wan: (C, F, H, W), the latest frame
    assert Image.open(io.BytesIO(previews.preview_png(named["WanPipeline"], video))).size == (6, 4)
    assert previews.preview_png(named["KandinskyPipeline"], torch.randn(16, 4, 4)) is None

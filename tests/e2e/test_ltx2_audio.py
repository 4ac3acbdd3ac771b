"""LTX-2 (the gallery's ``ltx-2`` / ``ltx-2.3`` entries): the MP4 carries the pipeline's audio
track at the vocoder's sample rate, and the frame rate the model is conditioned on is the one
written to the file (24 fps by default). Image-to-video and text-to-video, over gRPC on a tiny
random-weight LTX-2."""

from __future__ import annotations

import av
import numpy as np
import pytest
from features_support import load_ok, write_image
from harness import backend_pb2
from tiny_video_models import LTX2_TINY_OPTIONS, tiny_ltx2_image_to_video_path

from diffusers_backend import media
from diffusers_backend.errors import InvalidArgument

# The gallery entry: low_vram, torch_dtype:bf16 (plus what a 2-layer LTX-2 needs).
GALLERY_FIELDS = {"LowVRAM": True, "Options": ["torch_dtype:bf16", *LTX2_TINY_OPTIONS]}
TINY_SAMPLE_RATE = 16000  # the tiny vocoder's output_sampling_rate (LTX-2's real one: 24000)


pytestmark = pytest.mark.usefixtures("free_backend_after")


def _streams(path):
    """(video fps, frame count, width, height, audio sample rate or None, audio channels)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for _ in container.decode(video=0))
        return (video.average_rate, frames, video.width, video.height,
                audio.sample_rate if audio else None, audio.channels if audio else 0)


def _generate(server, dst, **fields):
    request = backend_pb2.GenerateVideoRequest(prompt="a red cube", num_frames=5, step=2,
                                               seed=3, dst=str(dst), **fields)
    return server.stub.GenerateVideo(request, timeout=300, metadata=server.metadata)


def test_image_to_video_writes_the_audio_track_at_the_vocoder_rate(backend, tmp_path):
    result = load_ok(backend, tiny_ltx2_image_to_video_path(),
                     PipelineType="LTX2ImageToVideoPipeline", **GALLERY_FIELDS)
    assert "as LTX2ImageToVideoPipeline" in result.message
    start = write_image(tmp_path / "start.png", size=(32, 32), seed=1)
    dst = tmp_path / "clip.mp4"
    reply = _generate(backend, dst, start_image=str(start), width=32, height=32)
    assert "fps=24" in reply.message and f"audio {TINY_SAMPLE_RATE} Hz" in reply.message
    fps, frames, width, height, rate, channels = _streams(dst)
    assert fps == 24 and frames == 5 and (width, height) == (32, 32)
    assert rate == TINY_SAMPLE_RATE and channels == 2


def test_text_to_video_writes_the_audio_track(backend, tmp_path):
    """LTX2Pipeline (text-to-video) on the same weights; an explicit fps reaches both."""
    result = load_ok(backend, tiny_ltx2_image_to_video_path(), PipelineType="LTX2Pipeline",
                     **GALLERY_FIELDS)
    assert "as LTX2Pipeline" in result.message
    dst = tmp_path / "t2v.mp4"
    reply = _generate(backend, dst, width=32, height=32, fps=12)
    assert "fps=12" in reply.message and "audio" in reply.message
    fps, frames, _, _, rate, _ = _streams(dst)
    assert fps == 12 and frames == 5 and rate == TINY_SAMPLE_RATE


# ------------------------------------------------------------------ media, without a model


def test_mux_keeps_rate_channels_and_duration(tmp_path):
    seconds, rate = 0.5, 24000
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    frames = np.random.default_rng(0).random((12, 20, 30, 3), dtype=np.float32)
    for name, audio, channels in (("stereo", np.stack([tone, tone]), 2),
                                  ("mono", tone, 1),
                                  ("interleaved", np.stack([tone, tone], axis=1), 2)):
        dst = tmp_path / f"{name}.mp4"
        media.write_video_atomic(frames, str(dst), 24, audio=audio, sample_rate=rate)
        fps, count, width, height, got_rate, got_channels = _streams(dst)
        assert (fps, count, width, height) == (24, 12, 30, 20)
        assert (got_rate, got_channels) == (rate, channels)
        with av.open(str(dst)) as container:
            samples = sum(f.samples for f in container.decode(audio=0))
        assert abs(samples - len(tone)) <= 2048  # AAC pads to whole 1024-sample frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interleaved.mp4", "mono.mp4",
                                                          "stereo.mp4"]  # no temp files left


def test_torch_bf16_audio_and_bad_inputs(tmp_path):
    import torch

    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    audio = torch.zeros(1, 2, 4000, dtype=torch.bfloat16)  # a batch of one, as pipelines return
    media.write_video_atomic(frames, str(tmp_path / "ok.mp4"), 8, audio=audio,
                             sample_rate=16000)
    assert _streams(tmp_path / "ok.mp4")[4] == 16000
    with pytest.raises(InvalidArgument, match="sample rate"):
        media.write_video_atomic(frames, str(tmp_path / "bad.mp4"), 8, audio=audio,
                                 sample_rate=0)
    with pytest.raises(InvalidArgument, match="waveform"):
        media.write_video_atomic(frames, str(tmp_path / "bad.mp4"), 8,
                                 audio=np.zeros((2, 3, 4, 5)), sample_rate=16000)
    assert not (tmp_path / "bad.mp4").exists()

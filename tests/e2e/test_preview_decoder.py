"""``preview_decoder:<folder>`` over real gRPC: the tiny SD loaded with a tiny random-weight
``AutoencoderTiny`` streams previews decoded by it (PNG, at output size, unlike the linear
map's latent-size thumbnails); the same request with the model loaded without it gets the
linear map's; a folder that is not there fails LoadModel with a clear message."""

from __future__ import annotations

import io
import threading
import time

import pytest
from harness import start_backend
from PIL import Image, ImageChops
from tiny_models import tiny_autoencoder_path

import progress_pb2
import progress_pb2_grpc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = start_backend(tmp_path_factory.mktemp("preview-decoder"))
    yield backend
    backend.stop()


def previews_of(server, dst: str, **fields) -> list[Image.Image]:
    """The step previews a ``dst`` watcher receives while the request runs."""
    stub = progress_pb2_grpc.ProgressStub(server.channel)
    stream = stub.Watch(progress_pb2.WatchRequest(dst=dst, previews=True), timeout=120)
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    time.sleep(0.3)  # the stream is registered before the request starts
    server.image(dst, seed=7, step=3, **fields)
    reader.join(60)  # a dst watcher's stream ends after its request's last event
    assert events and events[-1].stage == "done", [e.stage for e in events]
    pictures = [Image.open(io.BytesIO(e.preview_png)) for e in events if e.stage == "step"]
    assert len(pictures) == 3
    for picture in pictures:
        picture.load()
        assert picture.format == "PNG" and picture.mode == "RGB"
    return pictures


def test_previews_come_from_the_tiny_autoencoder(server, tiny_sd, tmp_path):
    decoder = tiny_autoencoder_path()
    loaded = server.load(tiny_sd, Options=[f"preview_decoder:{decoder}"])
    assert loaded.success, loaded.message
    decoded = previews_of(server, str(tmp_path / "decoded.png"), width=64, height=48)
    # The tiny autoencoder upsamples 2x, as the tiny VAE does: the output's own size.
    assert {p.size for p in decoded} == {(64, 48)}

    assert server.load(tiny_sd).success  # the same model without it: the linear map
    linear = previews_of(server, str(tmp_path / "linear.png"), width=64, height=48)
    assert {p.size for p in linear} == {(32, 24)}  # latent resolution
    for mapped, tiny in zip(linear, decoded, strict=True):
        grown = mapped.convert("RGB").resize(tiny.size)
        assert ImageChops.difference(grown, tiny.convert("RGB")).getbbox() is not None


def test_a_missing_folder_fails_the_load(server, tiny_sd, tmp_path):
    missing = tmp_path / "no-taesd"
    result = server.load(tiny_sd, Options=[f"preview_decoder:{missing}"])
    assert not result.success
    assert f"no AutoencoderTiny folder at {missing}" in result.message
    assert "Traceback" not in result.message

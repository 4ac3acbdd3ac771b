"""Checkpoints named by URL: downloaded once into the models folder, then loaded.

A loopback HTTP server (http.server in a thread) serves the tiny single-file SD checkpoint
of tests/tiny_models.py, and can misbehave on purpose: drop the connection midway once
(the download resumes with a Range request), announce more bytes than it sends (refused as
a size mismatch), ignore Range, or name the file only in Content-Disposition.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from features_support import free
from tiny_models import tiny_sd_single_file

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import download
from diffusers_backend.loading.spec import LoadSpec


class Site:
    """What the server serves (path -> bytes), how it misbehaves, and what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()  # send half the body, then close (first GET only)
        self.short: set[str] = set()  # announce 100 bytes more than it sends
        self.no_range: set[str] = set()  # ignore Range: always the whole file
        self.disposition: dict[str, str] = {}  # path -> Content-Disposition file name
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)


def _handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest's output clean
            pass

        def _serve(self, body_wanted: bool) -> None:
            path = self.path.split("?", 1)[0]
            site.requests.append((self.command, path, self.headers.get("Range", "")))
            data = site.files.get(path)
            if data is None:
                self.send_error(404)
                return
            start, status = 0, 200
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and path not in site.no_range:
                start = int(wanted[6:].split("-", 1)[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            announced = len(body) + (100 if path in site.short else 0)
            self.send_header("Content-Length", str(announced))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if path in site.disposition:
                self.send_header("Content-Disposition",
                                 f'attachment; filename="{site.disposition[path]}"')
            self.end_headers()
            if not body_wanted:
                return
            if path in site.drop_once and self.command == "GET":
                site.drop_once.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
            if path in site.short:
                self.close_connection = True

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._serve(True)

        def do_HEAD(self):  # noqa: N802
            self._serve(False)

    return Handler


@pytest.fixture()
def site():
    state = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture()
def checkpoint() -> bytes:
    return tiny_sd_single_file("safetensors").read_bytes()


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda _s: None)


def _gets(site: Site) -> list[tuple[str, str, str]]:
    return [r for r in site.requests if r[0] == "GET"]


# ------------------------------------------------------------------ end to end over gRPC


def test_url_model_downloads_once_then_loads_from_the_models_folder(backend, site, checkpoint,
                                                                     tiny_sd, tmp_path):
    site.files["/models/tiny-sd.safetensors"] = checkpoint
    models = tmp_path / "models"
    url = f"{site.url}/models/tiny-sd.safetensors?download=true"
    try:
        result = backend.load(url, ModelPath=str(models), Options=[f"config:{tiny_sd}"])
        assert result.success, result.message
        assert (models / "tiny-sd.safetensors").read_bytes() == checkpoint
        assert not list(models.glob("*.partial"))
        assert f"downloading {url} to {models / 'tiny-sd.safetensors'}" in backend.log()
        assert "downloading tiny-sd.safetensors: 100%" in backend.log()
        assert backend.image(tmp_path / "url.png", seed=3).success
        gets = len(_gets(site))
        again = backend.load(url, ModelPath=str(models), Options=[f"config:{tiny_sd}"])
        assert again.success, again.message
        assert len(_gets(site)) == gets  # the second load downloaded nothing
        assert "downloaded before from" in backend.log()
    finally:
        free(backend)


def test_dropped_connection_resumes_with_a_range_request(backend, site, checkpoint, tiny_sd,
                                                         tmp_path):
    site.files["/tiny-sd.safetensors"] = checkpoint
    site.drop_once.add("/tiny-sd.safetensors")
    try:
        result = backend.load(f"{site.url}/tiny-sd.safetensors", ModelPath=str(tmp_path),
                              Options=[f"config:{tiny_sd}"])
        assert result.success, result.message
    finally:
        free(backend)
    gets = _gets(site)
    assert len(gets) == 2 and gets[0][2] == ""
    assert gets[1][2] == f"bytes={len(checkpoint) // 2}-"
    assert (tmp_path / "tiny-sd.safetensors").read_bytes() == checkpoint
    assert "resuming at" in backend.log()


def test_size_mismatch_is_refused_and_nothing_is_renamed_into_place(backend, site, checkpoint,
                                                                    tmp_path):
    site.files["/tiny-sd.safetensors"] = checkpoint
    site.short.add("/tiny-sd.safetensors")
    result = backend.load(f"{site.url}/tiny-sd.safetensors", ModelPath=str(tmp_path))
    free(backend)
    assert not result.success
    assert "did not complete" in result.message and "Content-Length" in result.message
    assert not (tmp_path / "tiny-sd.safetensors").exists()


def test_pickle_url_is_refused_before_downloading(backend, site, tmp_path):
    site.files["/model.ckpt"] = b"not fetched"
    result = backend.load(f"{site.url}/model.ckpt", ModelPath=str(tmp_path))
    free(backend)
    assert not result.success
    assert "SAFETENSORS=0" in result.message and "pickle" in result.message
    assert site.requests == []  # not a byte was asked for
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ the downloader alone


def _spec(url: str, folder: Path) -> LoadSpec:
    return LoadSpec(model=url, model_path=str(folder))


def test_a_partial_file_left_before_is_resumed(site, checkpoint, tmp_path):
    site.files["/a.safetensors"] = checkpoint
    (tmp_path / "a.safetensors.partial").write_bytes(checkpoint[:1000])
    spec = download.fetch_url_model(_spec(f"{site.url}/a.safetensors", tmp_path), True)
    assert spec.model_file == str(tmp_path / "a.safetensors") and spec.model == "a.safetensors"
    assert _gets(site) == [("GET", "/a.safetensors", "bytes=1000-")]
    assert (tmp_path / "a.safetensors").read_bytes() == checkpoint


def test_a_server_ignoring_range_restarts_from_zero(site, checkpoint, tmp_path):
    site.files["/a.safetensors"] = checkpoint
    site.no_range.add("/a.safetensors")
    (tmp_path / "a.safetensors.partial").write_bytes(b"x" * 1000)
    download.fetch_url_model(_spec(f"{site.url}/a.safetensors", tmp_path), True)
    assert (tmp_path / "a.safetensors").read_bytes() == checkpoint


def test_download_link_without_a_name_uses_content_disposition(site, checkpoint, tmp_path):
    site.files["/api/download/models/42"] = checkpoint
    site.disposition["/api/download/models/42"] = "dream.safetensors"
    spec = download.fetch_url_model(_spec(f"{site.url}/api/download/models/42", tmp_path),
                                     True)
    assert Path(spec.model_file).name == "dream.safetensors"
    assert (tmp_path / "dream.safetensors").read_bytes() == checkpoint


def test_content_disposition_pickle_is_refused_before_the_body(site, tmp_path):
    site.files["/api/download/models/7"] = b"pickle"
    site.disposition["/api/download/models/7"] = "old.ckpt"
    with pytest.raises(LoadError, match="SAFETENSORS=0"):
        download.fetch_url_model(_spec(f"{site.url}/api/download/models/7", tmp_path), True)
    assert _gets(site) == []


def test_pickle_allowed_with_safetensors_off(site, tmp_path):
    site.files["/old.ckpt"] = b"pickle bytes"
    spec = download.fetch_url_model(_spec(f"{site.url}/old.ckpt", tmp_path), False)
    assert Path(spec.model_file).read_bytes() == b"pickle bytes"


def test_http_errors_and_missing_models_folder_are_load_errors(site, tmp_path):
    with pytest.raises(LoadError, match="HTTP 404"):
        download.fetch_url_model(_spec(f"{site.url}/nothing.safetensors", tmp_path), True)
    with pytest.raises(LoadError, match="ModelPath"):
        download.fetch_url_model(LoadSpec(model=f"{site.url}/a.safetensors"), True)
    assert download.fetch_url_model(_spec("some/hub-id", tmp_path), True).model == "some/hub-id"

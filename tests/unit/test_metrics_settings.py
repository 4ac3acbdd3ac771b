"""The metrics pieces that need no server: ``DIFFUSERS_METRICS_ADDR`` parsed and refused by
the settings, and the size buckets the image metrics are labelled with
(``serving/metrics.size_bucket``). The endpoint itself, scraped from a real server, is
tested in tests/e2e/test_metrics.py."""

from __future__ import annotations

import pytest

from diffusers_backend.serving.metrics import size_bucket
from diffusers_backend.settings import SettingsError, load_settings, parse_metrics_addr


@pytest.mark.parametrize(("raw", "addr"), [
    ("", ""), ("9090", "127.0.0.1:9090"), (":9090", "127.0.0.1:9090"),
    ("0.0.0.0:9100", "0.0.0.0:9100"), ("[::1]:9090", "[::1]:9090"),
])
def test_metrics_addr_parsing(raw, addr):
    assert parse_metrics_addr(raw) == addr
    assert load_settings({"DIFFUSERS_METRICS_ADDR": raw}).metrics_addr == addr


@pytest.mark.parametrize("raw", ["http://x:1", "host:port", "99999", "localhost"])
def test_bad_metrics_addr_is_refused(raw):
    with pytest.raises(SettingsError, match="DIFFUSERS_METRICS_ADDR"):
        load_settings({"DIFFUSERS_METRICS_ADDR": raw})


def test_size_buckets():
    assert size_bucket(64, 64) == "<=256x256"
    assert size_bucket(512, 512) == "<=512x512"
    assert size_bucket(640, 512) == "<=768x768"
    assert size_bucket(1024, 1024) == "<=1024x1024"
    assert size_bucket(0, 0) == "unknown"
    assert size_bucket(8192, 8192) == ">4096x4096"

"""Shared fixtures: tiny pipelines on disk and real backend servers on loopback (the
harness itself, for modules to import, is ``harness.py``), and the test tiers: every test
under tests/unit is marked ``unit``, every test under tests/e2e ``e2e``.

Nothing here or in ``harness.py`` acts at import: the offline environment and the gRPC stubs
are set up in :func:`pytest_configure`, before any test module is imported."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness import BackendProcess

TIERS = ("unit", "e2e")  # folders under tests/, each a marker of the same name


def pytest_configure(config: pytest.Config) -> None:
    """Offline (no test reaches the Hub) and the gRPC stubs generated if `make protogen`
    has not run (a bare pytest call); test modules import the stubs through ``harness``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # One torch thread per process (set before torch is imported, and inherited by the
    # xdist workers and the servers they start): the tiny models gain nothing from threads,
    # and with several workers sharing the cores, idle threads spinning cost a quarter of
    # the suite's CPU time. Tests of the Threads option set their own count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from diffusers_backend.serving.protogen import generate

    generate()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, from the folder it lives in (``-m unit``, ``-m e2e``)."""
    for item in items:
        for tier in TIERS:
            if tier in item.path.relative_to(config.rootpath).parts[:2]:
                item.add_marker(getattr(pytest.mark, tier))


def start_backend(*args, **kwargs) -> BackendProcess:
    from harness import start_backend as start

    return start(*args, **kwargs)


@pytest.fixture(scope="session")
def tiny_sd() -> Path:
    from tiny_models import tiny_sd_path

    return tiny_sd_path()


@pytest.fixture(scope="module")
def single_torch_thread():
    """In-process generation tests: tiny models gain nothing from threads, and on a busy
    2-core box spinning threads make each generation many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_sd_pipeline(tiny_sd):
    """The tiny SD pipeline loaded in this process (one per test module: tests change it)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backend")


@pytest.fixture(scope="session")
def backend(session_tmp) -> Iterator[BackendProcess]:
    """One shared server for tests that leave it as they found it (model loaded or not)."""
    server = start_backend(session_tmp)
    yield server
    server.stop()


@pytest.fixture()
def fresh_backend(tmp_path) -> Iterator[BackendProcess]:
    """A server of the test's own, for tests that change its state."""
    server = start_backend(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def loaded_backend(session_tmp, tiny_sd) -> Iterator[BackendProcess]:
    """A shared server with the tiny SD pipeline loaded; tests must not Free or reload it."""
    server = start_backend(session_tmp)
    result = server.load(tiny_sd)
    assert result.success, result.message
    yield server
    server.stop()


@pytest.fixture()
def free_backend_after(backend) -> Iterator[BackendProcess]:
    """The shared server, with its model freed after the test (modules that load their own
    models on it use this, so they leave it as they found it)."""
    from features_support import free

    yield backend
    free(backend)


@pytest.fixture(scope="module")
def flux_base_backend(tmp_path_factory) -> Iterator[BackendProcess]:
    """A server whose BFL_REPO is the tiny Flux folder (Flux loads take their base there)."""
    from tiny_image_models import tiny_flux_path

    server = start_backend(tmp_path_factory.mktemp("flux-base"),
                           env={"BFL_REPO": str(tiny_flux_path())})
    yield server
    server.stop()


@pytest.fixture()
def hub_allowed(monkeypatch):
    """The Hub allowed (tests run with HF_HUB_OFFLINE=1) and nothing remembered by the probe."""
    from diffusers_backend.loading import hub

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    hub.forget()
    yield
    hub.forget()

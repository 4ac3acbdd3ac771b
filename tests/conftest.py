"""Shared fixtures: tiny pipelines on disk and real backend servers on loopback (the
harness itself, for modules to import, is ``harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BackendProcess, start_backend


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

"""The unit tier runs in process: a unit test that opens a network socket, starts a process
or creates a gRPC server or channel fails, naming the tier it belongs in (tests/e2e).

The guard is installed around each phase of each unit item (setup, call, teardown) by the
runtest hooks below, not by an autouse fixture: a fixture of the test's own scope would miss
what module- and session-scoped fixtures do when they are set up. Runtest hooks of this
conftest apply only to items under tests/unit, so tests/e2e is untouched. Session fixtures
shared with e2e (the tiny model builders in tests/conftest.py) are set up under the guard
when a unit test asks first: building tiny models is in process, so they pass. The teardown
after the last item of the run is not guarded: it finalizes session fixtures an e2e test
may have started (a backend server)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import grpc
import pytest

_E2E = "unit tests run in process; a test that {} belongs in tests/e2e"
_NETWORK = (socket.AF_INET, socket.AF_INET6)


def _refuse_network(real: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: socket.socket, address: Any, *args: Any, **kwargs: Any) -> Any:
        if self.family in _NETWORK:
            raise AssertionError(_E2E.format(f"opens a network socket ({address!r})"))
        return real(self, address, *args, **kwargs)

    return guarded


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(_E2E.format(what))

    return refused


@contextmanager
def in_process_only() -> Iterator[None]:
    """Network sockets, processes and gRPC servers and channels refused while it is open."""
    with ExitStack() as stack:
        for name in ("bind", "connect", "connect_ex"):
            real = getattr(socket.socket, name)
            stack.enter_context(mock.patch.object(socket.socket, name, _refuse_network(real)))
        stack.enter_context(mock.patch.object(subprocess.Popen, "__init__",
                                              _refuse("starts a process")))
        for module in (grpc, grpc.aio):
            for name in ("server", "insecure_channel", "secure_channel"):
                stack.enter_context(mock.patch.object(
                    module, name, _refuse("creates a gRPC server or channel")))
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with in_process_only():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with in_process_only():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    if nextitem is None:  # the end of the run: session fixtures of both tiers finalize
        yield
        return
    with in_process_only():
        yield

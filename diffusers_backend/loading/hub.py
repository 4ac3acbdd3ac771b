"""Whether the Hugging Face Hub can be reached, asked once before a load needs it.

With no network, huggingface_hub retries every request with growing pauses (about 15 s
per file) and diffusers then reports a ``ConnectError``. One short TCP connection to the
Hub's address (or to the HTTPS proxy) says at once whether that wait can end well; when it
cannot, the load runs in huggingface_hub's offline mode (the cache only, no retries) and a
model that is not cached fails at once with a line that says what to do. The answer is
remembered for a short while, so a host retrying a load does not probe each time.
``HF_HUB_OFFLINE=1`` skips the probe: the user has said there is no Hub.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

PROBE_TIMEOUT_S = 2.0
REMEMBER_S = 30.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}

_lock = threading.Lock()
_last: tuple[float, str, str | None] | None = None  # (when, endpoint, reason)


def offline_by_choice() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: never contact the Hub."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_ENDPOINT


def _target(url: str) -> tuple[str, int, str]:
    """Where a connection to ``url`` goes first: (host, port, how to name it in a message).
    Through an HTTP(S) proxy when one is set for that host, as huggingface_hub does."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return via.hostname or "", via.port or 80, f"proxy {via.hostname}:{via.port or 80}"
    return host, port, host


def _connect(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else why not (name lookup included)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return exc.strerror or str(exc)
    except TimeoutError:
        return f"no answer within {timeout:.0f} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url``'s host answers within ``timeout``, else a short reason. Runs the
    lookup in a thread: a name lookup has no timeout of its own."""
    host, port, name = _target(url)
    if not host:
        return f"{url} names no host"
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(_connect(host, port, timeout)),
                              name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if not result:
        return f"{name}: no answer within {timeout:.0f} s"
    return None if result[0] is None else f"{name}: {result[0]}"


def unreachable() -> str | None:
    """Why the Hub cannot be reached right now, or None (reachable, or offline by choice)."""
    global _last
    if offline_by_choice():
        return None
    url, now = endpoint(), time.monotonic()
    with _lock:
        if _last is not None and _last[1] == url and now - _last[0] < REMEMBER_S:
            return _last[2]
    reason = probe(url)
    with _lock:
        _last = (time.monotonic(), url, reason)
    return reason


def forget() -> None:
    """Drop the remembered answer (tests; a network that just came back)."""
    global _last
    with _lock:
        _last = None


def is_cached(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds this repo's ``model_index.json``."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - an id the Hub would refuse is not cached either
        return False


@contextmanager
def offline_mode(active: bool = True) -> Iterator[None]:
    """huggingface_hub's offline mode while the block runs (the cache only, no requests,
    no retries); what ``HF_HUB_OFFLINE=1`` does, for one load."""
    if not active:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def unreachable_advice(reason: str) -> str:
    """The one-line explanation and fix for a Hub id that cannot be fetched."""
    return (f"the Hub cannot be reached ({reason}) and the local cache has no copy; copy the "
            "model into the models folder and load it by path, or set HF_HUB_OFFLINE=1 to "
            "use the cache only")


def why_no_hub() -> str:
    """Why a load could not ask the Hub, as a phrase: the user's choice or the network."""
    if offline_by_choice():
        return "HF_HUB_OFFLINE is set"
    reason = unreachable()
    return f"the Hugging Face Hub cannot be reached ({reason})" if reason else "the Hub is offline"

"""The registry's JSON cache on disk: where it lives, the stamp that says which diffusers it
describes (computed without importing diffusers), and atomic reads and writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("diffusers_dynamic_loader")

CACHE_SCHEMA = 1


def cache_dir() -> Path:
    """``$DIFFUSERS_LOADER_CACHE_DIR``, else ``$XDG_CACHE_HOME/localai-diffusers``, else
    ``~/.cache/localai-diffusers``."""
    env = os.environ.get("DIFFUSERS_LOADER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "localai-diffusers"


def diffusers_stamp() -> dict[str, Any] | None:
    """Identify the installed diffusers without importing it (version, place, mtimes)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("diffusers")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    init = Path(spec.origin)
    try:
        from importlib.metadata import version

        ver = version("diffusers")
    except Exception:  # metadata missing (e.g. a source checkout on sys.path)
        ver = "unknown"
    site = init.parent.parent
    try:
        init_mtime = init.stat().st_mtime_ns
        # The site dir changes when packages are (un)installed there; optional
        # dependencies decide which pipelines are real and which are dummies.
        site_mtime = site.stat().st_mtime_ns
    except OSError:
        init_mtime = site_mtime = 0
    return {
        "schema": CACHE_SCHEMA,
        "diffusers_version": ver,
        "diffusers_location": str(init.parent),
        "init_mtime_ns": init_mtime,
        "site_mtime_ns": site_mtime,
    }


def cache_file(stamp: dict[str, Any]) -> Path:
    digest = hashlib.sha1(stamp["diffusers_location"].encode()).hexdigest()[:12]
    return cache_dir() / f"pipeline-registry-{digest}.json"


def read_cache(stamp: dict[str, Any]) -> dict[str, Any] | None:
    """The cached records when they describe this diffusers, else None (with a log line)."""
    path = cache_file(stamp)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable diffusers registry cache %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("stamp") != stamp:
        logger.info("Diffusers registry cache %s is stale; rebuilding", path)
        return None
    if not isinstance(data.get("pipelines"), dict) or not isinstance(data.get("auto"), dict):
        logger.warning("Ignoring malformed diffusers registry cache %s", path)
        return None
    return data


def write_cache(data: dict[str, Any]) -> None:
    """Atomic write (tmp file + rename); any failure only logs a warning."""
    path = cache_file(data["stamp"])
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"), sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("Cannot write diffusers registry cache %s: %s", path, exc)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass

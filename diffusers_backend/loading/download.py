"""Single-file checkpoints named by URL: ``Model: https://.../model.safetensors``.

The file is downloaded once into the models folder (ModelPath) under its own name and then
loads like any local single file; a later LoadModel finds it there and downloads nothing.

* Pickle checkpoints (.ckpt/.pt/.bin/.pth) are refused under ``SAFETENSORS`` before a byte
  is downloaded (from the URL's name, or the server's Content-Disposition name when the URL
  has none).
* The download goes to ``NAME.partial`` beside the target and is renamed into place only
  once complete (a half-written file never looks like a checkpoint). A ``.partial`` left by
  an interrupted download, or a connection that drops midway, is resumed with an HTTP Range
  request; a server that ignores Range restarts it from zero.
* The size is checked against Content-Length (or Content-Range's total): a file that ends
  short after every retry, or grows past it, is refused and not renamed into place.
* Progress goes to the log every 10 % (or every 10 s without a known size).

Standard library only (``urllib``); ``HF_TOKEN`` is sent to huggingface.co URLs.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

from diffusers_backend.errors import LoadError
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.registry.model_files import PICKLE_SUFFIXES, SINGLE_FILE_SUFFIXES

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ATTEMPTS = 4  # one download and up to three resumes
TIMEOUT_S = 60.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+\-]")


def is_url(model: str) -> bool:
    return model.strip().lower().startswith(("http://", "https://"))


def _file_name(name: str) -> str:
    """A file name safe to create in the models folder (no folders, no leading dot)."""
    name = _SAFE_NAME.sub("_", Path(urllib.parse.unquote(name)).name).lstrip(".")
    return name[:200]


def _name_from_url(url: str) -> str:
    return _file_name(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def _name_from_disposition(header: str | None) -> str:
    if not header:
        return ""
    match = re.search(r"filename\*=(?:UTF-8'')?([^;]+)", header, re.I) or re.search(
        r'filename="?([^";]+)"?', header, re.I)
    return _file_name(match.group(1).strip()) if match else ""


def _check_name(name: str, url: str, safetensors_only: bool) -> None:
    suffix = Path(name).suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise LoadError(
            f"{url} does not name a checkpoint file ({name or 'no file name'}); a URL model "
            f"must be one of {', '.join(SINGLE_FILE_SUFFIXES)}"
        )
    if safetensors_only and suffix in PICKLE_SUFFIXES:
        raise LoadError(
            f"refusing to download pickle checkpoint {name} from {url}: pickle files can run "
            "code when loaded. Use a .safetensors file, or set SAFETENSORS=0 to allow it"
        )


def _request(url: str, start: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": "diffusers-grpc-backend"}
    if start:
        headers["Range"] = f"bytes={start}-"
    token = os.environ.get("HF_TOKEN", "").strip()
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if token and (host == "huggingface.co" or host.endswith(".huggingface.co")):
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def _total_size(response: http.client.HTTPResponse, start: int) -> int | None:
    """The whole file's size from a 200 (Content-Length) or 206 (Content-Range) reply."""
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != start:
            return None
        return int(match.group(2))
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


class _Progress:
    def __init__(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self.done = name, total, done
        self.next_tenth = (done * 10 // total + 1) if total else 0
        self.last_log = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.total:
            tenth = self.done * 10 // self.total
            if tenth >= self.next_tenth:
                self.next_tenth = tenth + 1
                log.info("downloading %s: %d%% (%s of %s)", self.name,
                         self.done * 100 // self.total, _human(self.done), _human(self.total))
        elif now - self.last_log >= 10:
            log.info("downloading %s: %s", self.name, _human(self.done))
            self.last_log = now


def _download(url: str, target: Path) -> Path:
    """Fetch ``url`` into ``target`` through ``target.partial``, resuming on short reads."""
    partial = target.with_name(target.name + ".partial")
    expected: int | None = None
    last_error = ""
    for attempt in range(1, ATTEMPTS + 1):
        start = partial.stat().st_size if partial.exists() else 0
        try:
            response = urllib.request.urlopen(_request(url, start), timeout=TIMEOUT_S)  # noqa: S310 - http(s) only, checked by is_url
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:  # our partial is already whole (or wrong): restart
                partial.unlink(missing_ok=True)
                continue
            raise LoadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            log.warning("downloading %s: %s (attempt %d of %d)", url, last_error, attempt,
                        ATTEMPTS)
            time.sleep(min(2.0, 0.2 * attempt))
            continue
        with response:
            resumed = response.status == 206 and start > 0
            total = _total_size(response, start if resumed else 0)
            if total is not None and expected is not None and total != expected:
                partial.unlink(missing_ok=True)
                raise LoadError(f"downloading {url}: the file changed on the server "
                                f"({expected} bytes, now {total}); try again")
            expected = total if total is not None else expected
            if start and not resumed:
                log.info("downloading %s: the server does not resume; starting over",
                         target.name)
            elif resumed:
                log.info("downloading %s: resuming at %s", target.name, _human(start))
            progress = _Progress(target.name, expected, start if resumed else 0)
            try:
                with open(partial, "ab" if resumed else "wb") as out:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        progress.add(len(chunk))
                        if expected is not None and progress.done > expected:
                            break
                    out.flush()
                    os.fsync(out.fileno())
            except (OSError, ValueError, http.client.HTTPException) as exc:  # dropped midway
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("downloading %s: connection lost at %s (%s); attempt %d of %d",
                            target.name, _human(partial.stat().st_size), last_error, attempt,
                            ATTEMPTS)
                continue
        size = partial.stat().st_size
        if expected is None or size == expected:
            if expected is None:
                log.warning("downloading %s: the server sent no size; %s received, not "
                            "checked", target.name, _human(size))
            os.replace(partial, target)
            return target
        if size > expected:
            partial.unlink(missing_ok=True)
            raise LoadError(f"downloading {url}: received {size} bytes but the server "
                            f"announced {expected}; refused")
        last_error = f"ended at {size} of {expected} bytes"
        log.warning("downloading %s: %s; attempt %d of %d", target.name, last_error, attempt,
                    ATTEMPTS)
    raise LoadError(
        f"downloading {url} did not complete after {ATTEMPTS} attempts ({last_error}); the "
        f"size did not match the server's Content-Length. {partial.name} is kept and the next "
        "LoadModel resumes it"
    )


def _is_existing(path: str) -> bool:
    return bool(path.strip()) and Path(path.strip()).expanduser().exists()


def _url_file_name(url: str) -> str:
    """The checkpoint's file name: the URL's last segment, else (download links such as
    ``/api/download/models/123``) the name the server gives in a HEAD reply."""
    name = _name_from_url(url)
    if Path(name).suffix.lower() in SINGLE_FILE_SUFFIXES:
        return name
    try:
        with urllib.request.urlopen(  # noqa: S310 - http(s) only, checked by is_url
                urllib.request.Request(url, method="HEAD", headers=_request(url).headers),
                timeout=TIMEOUT_S) as head:
            return _name_from_disposition(head.headers.get("Content-Disposition")) or name
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot download {url}: {type(exc).__name__}: {exc}") from None


def fetch_url_model(spec: LoadSpec, safetensors_only: bool) -> LoadSpec:
    """``spec`` with a URL ``Model`` replaced by the downloaded file (ModelFile); any other
    spec unchanged. Raises LoadError (refused pickle, HTTP error, size mismatch)."""
    url = spec.model.strip()
    if not is_url(url) or _is_existing(spec.model_file):
        return spec  # the host's own copy (managed artifacts) loads as it is
    if not spec.model_path.strip():
        raise LoadError(f"cannot download {url}: no models folder (ModelPath) to put it in")
    folder = Path(spec.model_path).expanduser()
    name = _name_from_url(url)
    if not (Path(name).suffix.lower() in SINGLE_FILE_SUFFIXES and (folder / name).is_file()):
        name = _url_file_name(url)
    _check_name(name, url, safetensors_only)
    target = folder / name
    if target.is_file():
        log.info("using %s, downloaded before from %s", target, url)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, target)
        _download(url, target)
        log.info("downloaded %s (%s)", target, _human(target.stat().st_size))
    return replace(spec, model=target.name, model_file=str(target))

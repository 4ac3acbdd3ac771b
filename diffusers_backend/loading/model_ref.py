"""Turn what the host sends (Model, ModelFile, ModelPath) into one thing to load.

The host sends ``Model`` as written in the YAML (a Hub id or a file/folder name),
``ModelPath`` (the models folder) and ``ModelFile`` (``ModelPath/Model``). If ModelFile
exists it is what the user meant (offline); else Model may be a path of its own; else it
is a Hub id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import hub, local_paths
from diffusers_backend.registry.model_files import PICKLE_SUFFIXES, SINGLE_FILE_SUFFIXES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class RefKind(Enum):
    FOLDER = "folder"
    SINGLE_FILE = "single_file"
    HUB = "hub"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where it is and how it must be loaded."""

    kind: RefKind
    location: str


def _local_candidates(model: str, model_file: str, model_path: str) -> list[Path]:
    candidates: list[Path] = []
    if model_file:
        candidates.append(Path(model_file))
    if model:
        candidates += local_paths.candidates(model, model_path)
    return candidates


def resolve_model_ref(
    model: str, model_file: str = "", model_path: str = "", *, safetensors_only: bool = True
) -> ModelRef:
    """Decide what to load; raise :class:`LoadError` naming the path when it cannot exist."""
    model, model_file, model_path = model.strip(), model_file.strip(), model_path.strip()
    for candidate in _local_candidates(model, model_file, model_path):
        if candidate.is_dir():
            return ModelRef(RefKind.FOLDER, str(candidate.resolve()))
        if candidate.is_file():
            suffix = candidate.suffix.lower()
            if suffix not in SINGLE_FILE_SUFFIXES:
                raise LoadError(
                    f"{candidate} is a file but not a checkpoint; expected a diffusers folder "
                    f"or one of {', '.join(SINGLE_FILE_SUFFIXES)}"
                )
            if safetensors_only and suffix in PICKLE_SUFFIXES:
                raise LoadError(
                    f"refusing pickle checkpoint {candidate.name}: pickle files can run code "
                    "when loaded. Convert it to .safetensors, or set SAFETENSORS=0 to allow it"
                )
            return ModelRef(RefKind.SINGLE_FILE, str(candidate.resolve()))
    looks_like_path = (
        model.startswith(("/", "./", "../", "~"))
        or model.lower().endswith(SINGLE_FILE_SUFFIXES)
        or not _HUB_ID.match(model)
    )
    if not model or looks_like_path:
        tried = ", ".join(str(c) for c in _local_candidates(model, model_file, model_path))
        raise LoadError(f"model not found on disk: {model or model_file} (looked at: {tried}; "
                        f"models folder: {model_path or 'not set (ModelPath)'})")
    return ModelRef(RefKind.HUB, model)


def resolve_reference(reference: str, model_path: str, what: str) -> ModelRef:
    """A second model an option names (``gguf_base``): an existing folder (absolute, or under
    the models folder) or else a Hub id; anything else fails naming where it was looked for."""
    reference = reference.strip()
    candidates = local_paths.candidates(reference, model_path)
    for candidate in candidates:
        if candidate.is_dir():
            return ModelRef(RefKind.FOLDER, str(candidate.resolve()))
    if reference and _HUB_ID.match(reference) and not reference.startswith((".", "~")):
        return ModelRef(RefKind.HUB, reference)
    tried = ", ".join(str(c) for c in candidates) or "nowhere"
    raise LoadError(f"{what} {reference!r} is neither a diffusers folder (looked at: {tried}) "
                    "nor a Hugging Face Hub id")


_MISSING_MARKERS = ("not fully cached", "not found", "offline", "outgoing traffic",
                    "cannot find the requested files", "does not appear to have",
                    "repository not found", "404", "connection", "couldn't connect",
                    "cannot tell the pipeline class", "no such file")


def looks_missing(exc: BaseException) -> bool:
    """Whether a library error means "this Hub id is not here" rather than a broken model."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in _MISSING_MARKERS)


def hub_status(repo_id: str, timeout: float = 3.0) -> str:
    """One short phrase on whether the Hugging Face Hub has ``repo_id``, for error messages.

    Never raises and never waits longer than ``timeout``: it runs only after a load failed.
    """
    if hub.offline_by_choice():
        return "the Hub was not asked: HF_HUB_OFFLINE is set and the model is not in the cache"
    reason = hub.unreachable()
    if reason is not None:
        return hub.unreachable_advice(reason)
    import urllib.error
    import urllib.request

    endpoint = hub.endpoint()
    try:
        urllib.request.urlopen(  # noqa: S310 - a fixed https endpoint
            urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD"),
            timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return "the Hub was reachable: the repo is gated or private (set HF_TOKEN)"
        if exc.code == 404:
            return "the Hub was reachable: no such repo there"
        return f"the Hub answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"the Hub could not be reached ({type(exc).__name__})"
    return "the Hub was reachable and has the repo, but its files could not be fetched"


def missing_model_message(model: str, model_file: str, model_path: str) -> str:
    """Name every place a model was looked for: the host's ModelFile, the models folder and
    the Hub id, and whether the Hub was reachable."""
    looked = [str(c) for c in _local_candidates(model, model_file, model_path)]
    folder = model_path or "not set (ModelPath)"
    where = ", ".join(dict.fromkeys(looked)) or "no path given"
    return (f"model {model or model_file!r} not found: no file or folder at {where} "
            f"(models folder: {folder}), and as Hugging Face Hub id {model!r}: "
            f"{hub_status(model)}")

"""``SAFETENSORS=1``: no weight file a load reads can be a pickle, whatever its name says.

A pickle checkpoint runs code when ``torch.load`` reads it. The checks look at what the
loader will really read: the resolved target of a link (a ``model.safetensors`` link to a
``.ckpt`` is a ``.ckpt``), the first bytes of every safetensors file, and every folder a
load may fall back to pickle weights in. ``use_safetensors: false`` cannot switch it off;
``SAFETENSORS=0`` does.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffusers_backend import path_guard
from diffusers_backend.errors import LoadError
from diffusers_backend.loading import local_paths
from diffusers_backend.loading.download import is_url
from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.registry.model_files import PICKLE_SUFFIXES

SAFE_SUFFIXES = (".safetensors", ".sft", ".gguf")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on its JSON header
_FOLDER_DEPTH = 2  # a diffusers folder: model_index.json, component/weights
HINT = "convert it to .safetensors, or set SAFETENSORS=0 to allow pickle weights"


def _refuse(what: str, path: str, why: str) -> LoadError:
    return LoadError(f"SAFETENSORS=1 refuses {what} {path_guard.shown(path)}: {why}; {HINT}")


def _header_ok(path: str, suffix: str) -> bool:
    """Whether the file starts as a safetensors (8-byte length, then ``{``) or GGUF file."""
    try:
        with path_guard.open_file(path, "weights") as fh:
            head = fh.read(9)
    except Exception:  # noqa: BLE001 - unreadable: the loader reports it with its path
        return True
    if suffix == ".gguf":
        return head[:4] == b"GGUF"
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= _MAX_HEADER and head[8:9] == b"{"


def check_weight_file(path: str, what: str, safetensors_only: bool) -> None:
    """A single weight file: a regular file and, under SAFETENSORS, safetensors or GGUF in
    both name and content (the loader picks its reader from the name of what it is given)."""
    path_guard.check_file(path, what, "weight file")
    if not safetensors_only:
        return
    real = os.path.realpath(path)
    for name in {path, real}:
        suffix = Path(name).suffix.lower()
        if suffix in PICKLE_SUFFIXES or suffix not in SAFE_SUFFIXES:
            raise _refuse(what, path, f"it is (or links to) {Path(real).name}, not a "
                          ".safetensors or .gguf file")
    if not _header_ok(path, Path(path).suffix.lower()):
        raise _refuse(what, path, "its content is not safetensors")


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    """Files in ``folder`` down to ``depth`` levels (links followed, loops not)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if depth > 1:
                yield from _walk(Path(entry.path), depth - 1)
        else:
            yield Path(entry.path)


def check_weight_folder(folder: str, what: str, safetensors_only: bool) -> None:
    """A model folder: every file in it regular (a FIFO would block the loader) and inside
    the allowed folders; under SAFETENSORS every folder holding pickle weights holds
    safetensors too (so no loader falls back to them) and every safetensors file is one."""
    path_guard.check_folder(folder, what)
    with_pickle: set[Path] = set()
    with_safe: set[Path] = set()
    for file in _walk(Path(folder), _FOLDER_DEPTH):
        st = path_guard.lookup(str(file))
        if st is None:
            continue  # a dangling link: the loader says so if it needs the file
        field = f"{what} file"
        path_guard.check_file(str(file), field, "regular file")
        if not safetensors_only:
            continue
        suffix = file.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            with_pickle.add(file.parent)
        elif suffix in (".safetensors", ".sft"):
            if not _header_ok(str(file), suffix):
                raise _refuse(what, str(file), "its content is not safetensors")
            with_safe.add(file.parent)
    for parent in sorted(with_pickle - with_safe):
        raise _refuse(what, str(parent), "it holds pickle weights (.bin/.ckpt/.pt) and no "
                      ".safetensors")


def refuse_pickle_kwargs(kwargs: dict[str, Any], safetensors_only: bool) -> None:
    """``use_safetensors: false`` (Options or EngineArgs) asks for pickle weights."""
    if safetensors_only and "use_safetensors" in kwargs and kwargs["use_safetensors"] is not True:
        raise LoadError(f"use_safetensors={kwargs['use_safetensors']!r} asks for pickle weights, "
                        "which SAFETENSORS=1 refuses; remove the option, or set SAFETENSORS=0")


def check_names(spec: LoadSpec) -> None:
    """Before the disk is looked at: the models folder, ModelFile and a Model that is a path
    must be inside the allowed folders (so nothing outside can be probed), and a ModelFile
    that exists must be a file or folder, not a FIFO that would block the load."""
    for name, value in (("ModelPath", spec.model_path), ("ModelFile", spec.model_file),
                        ("Model", spec.model)):
        value = value.strip()
        if not value or is_url(value):
            continue
        if name == "Model" and not value.startswith(("/", ".", "~")):
            continue  # a Hub id or a name inside ModelPath (checked once resolved)
        path_guard.check_syntax(value, name, "model")
        path_guard.confine(value, name)
    model_file = spec.model_file.strip()
    found = path_guard.lookup(model_file) if model_file else None
    if found is not None and not stat.S_ISDIR(found.st_mode):
        path_guard.check_file(model_file, "ModelFile", "model file")


def strict(safetensors_only: bool) -> dict[str, Any]:
    """The SAFETENSORS rule as loader keywords, its one home: under SAFETENSORS every
    ``from_pretrained`` gets ``use_safetensors=True``, so no loader falls back to pickle."""
    return {"use_safetensors": True} if safetensors_only else {}


def with_strict(kwargs: dict[str, Any], safetensors_only: bool) -> dict[str, Any]:
    """``kwargs`` with the SAFETENSORS rule added where they do not say otherwise (a
    ``use_safetensors`` they hold was refused already unless it is ``True``)."""
    return {**strict(safetensors_only), **kwargs}


def locate(name: str, model_path: str, what: str, dangling: bool = True) -> Path | None:
    """Where ``name`` is on disk (:func:`local_paths.candidates`), else None (a Hub id, or
    missing), looking only inside the allowed folders: a name written as a path is confined
    before the disk is looked at, and what is found is confined (a link may lead out).
    ``dangling``: a link to nothing counts as found (the weight checks then say so)."""
    if local_paths.names_a_path(name):
        path_guard.confine(name, what)  # before looking: no probing outside the folders
    for candidate in local_paths.candidates(name, model_path):
        if path_guard.lookup(str(candidate)) is not None or (dangling
                                                             and candidate.is_symlink()):
            path_guard.confine(str(candidate), what)
            return candidate
    return None


def check_local(path: str, what: str, role: str, safetensors_only: bool) -> None:
    """A path a load will read, by its role: ``weights`` (a folder or file: every file
    regular, no pickle under SAFETENSORS) or ``config`` (a folder, or a regular file)."""
    path_guard.confine(path, what)
    if role == "config":
        found = path_guard.lookup(path)
        if found is not None and not stat.S_ISDIR(found.st_mode):
            path_guard.check_file(path, what, "config file")
    elif Path(path).is_dir():
        check_weight_folder(path, what, safetensors_only)
    else:
        check_weight_file(path, what, safetensors_only)


def local_weights(name: str, model_path: str, what: str, safetensors_only: bool) -> Path | None:
    """The file or folder ``name`` means on disk (None: a Hub id), checked before any load:
    inside the allowed folders, a regular file or a folder, and no pickle under SAFETENSORS.
    """
    found = locate(name, model_path, what)
    if found is not None:
        check_local(str(found), what, "weights", safetensors_only)
    return found


def check_model_location(ref: ModelRef, safetensors_only: bool) -> None:
    """A local model: inside the allowed folders, every file regular, no pickle weights
    under SAFETENSORS (by resolved name and by content)."""
    if ref.kind is RefKind.HUB:
        return
    path_guard.confine(ref.location, "model")
    if ref.kind is RefKind.FOLDER:
        check_weight_folder(ref.location, "model", safetensors_only)
    else:
        check_weight_file(ref.location, "model", safetensors_only)

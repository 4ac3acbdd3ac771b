"""Which LoRA file a prompt tag's NAME means: ``NAME.safetensors`` in the ``lora_dir`` option's
folder, the models folder's ``loras/`` subfolder, or the models folder itself (first found).

Every folder is confined (``DIFFUSERS_ALLOWED_PATHS``) before it is listed, and the file a
name resolves to passes the same checks as a load-time LoRA (regular file, inside the
allowed folders, safetensors content under ``SAFETENSORS``). An unknown name is NOT_FOUND
with the names there are, closest first.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from diffusers_backend import path_guard
from diffusers_backend.errors import NotFound
from diffusers_backend.loading import local_paths, weight_guard
from diffusers_backend.loading.spec import LoadSpec

SUFFIX = ".safetensors"
LORA_SUBFOLDER = "loras"
MAX_LISTED = 12  # names shown in a NOT_FOUND message


def lora_folders(spec: LoadSpec) -> list[Path]:
    """The folders tags are looked up in, in order; each confined, missing ones left out."""
    folders: list[Path] = []
    named = spec.options.get("lora_dir")
    if isinstance(named, str) and named.strip():
        folders.append(local_paths.under_models_folder(named, spec.model_path))
    if spec.model_path:
        folders += [Path(spec.model_path) / LORA_SUBFOLDER, Path(spec.model_path)]
    found: list[Path] = []
    for folder in folders:
        path_guard.confine(str(folder), "LoRA folder")
        if folder.is_dir() and folder not in found:
            found.append(folder)
    return found


def available(spec: LoadSpec) -> dict[str, Path]:
    """Every LoRA name the tags may use, with its file (the first folder wins a name)."""
    names: dict[str, Path] = {}
    for folder in lora_folders(spec):
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                names.setdefault(entry.name[: -len(SUFFIX)], Path(entry.path))
    return names


def resolve(spec: LoadSpec, name: str, safetensors_only: bool) -> Path:
    """The checked file of LoRA ``name``, or NOT_FOUND naming the LoRAs there are."""
    names = available(spec)
    path = names.get(name)
    if path is None:
        raise NotFound(_unknown(name, names, spec))
    weight_guard.check_weight_file(str(path), f"LoRA {name}", safetensors_only)
    return path


def _unknown(name: str, names: dict[str, Path], spec: LoadSpec) -> str:
    where = ", ".join(path_guard.shown(str(folder)) for folder in lora_folders(spec))
    if not names:
        if not where:
            return (f"LoRA {name!r} not found: no LoRA folder (load the model with ModelPath, "
                    "or set the lora_dir option)")
        return f"LoRA {name!r} not found: no {SUFFIX} file in {where}"
    ranked = difflib.get_close_matches(name, list(names), n=len(names), cutoff=0.0)
    shown = ranked[:MAX_LISTED]
    more = f" and {len(ranked) - len(shown)} more" if len(ranked) > len(shown) else ""
    return (f"LoRA {name!r} not found in {where}; available: {', '.join(shown)}{more}")

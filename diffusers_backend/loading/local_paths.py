"""Where a name a model YAML gives means on disk: absolute, else under the models folder.

The one home of that rule (``ModelPath``, the host's models folder): the model itself, its
side files (LoRAs, ControlNet, CLIP, ``config``, ``gguf_base``, annotators...) and the LoRA
tag folder all look here, so they all mean the same place by the same name.
"""

from __future__ import annotations

import os
from pathlib import Path


def expand(name: str) -> Path:
    """``name`` with ``~`` expanded."""
    return Path(os.path.expanduser(name.strip()))


def under_models_folder(name: str, model_path: str) -> Path:
    """The place ``name`` means first: itself when absolute, else inside ``model_path``
    (as given when no models folder is set)."""
    path = expand(name)
    if path.is_absolute() or not model_path.strip():
        return path
    return Path(model_path.strip()) / path


def candidates(name: str, model_path: str) -> list[Path]:
    """Every place ``name`` may mean, in order: :func:`under_models_folder`, then (relative
    names only) the name as given, from the working folder."""
    first = under_models_folder(name, model_path)
    path = expand(name)
    return [first] if first == path else [first, path]


def names_a_path(name: str) -> bool:
    """Whether ``name`` is written as a path (absolute, ``./``, ``~``) rather than a plain
    name that may be a Hub id: such a name is confined before anything looks at the disk."""
    return expand(name).is_absolute() or name.strip().startswith((".", "~"))

"""The old address of :mod:`diffusers_backend.path_guard` (moved to the base layer, since
media and serving use it too), kept for engine/parallel/worker.py until it imports the new one.
"""

from diffusers_backend.path_guard import (
    MAX_PATH_CHARS,
    check_file,
    check_folder,
    check_syntax,
    confine,
    lookup,
    open_file,
    os_error,
    set_allowed_roots,
    shown,
)

__all__ = ["MAX_PATH_CHARS", "check_file", "check_folder", "check_syntax", "confine", "lookup",
           "open_file", "os_error", "set_allowed_roots", "shown"]

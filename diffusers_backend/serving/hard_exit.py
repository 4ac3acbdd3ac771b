"""The end of the process after shutdown: partial outputs removed, logs flushed, then
``os._exit``.

A normal interpreter exit waits for every worker thread, and a thread inside a long torch
operation (one huge attention, one huge convolution) cannot be interrupted: the process
would keep computing for minutes after it said "stopped". So once the gRPC server has
stopped (running requests had the grace period, then were cancelled), nothing is waited for.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def exit_now(code: int) -> None:
    """Remove the temp files of writes cut short, flush logs and streams, exit at once."""
    from diffusers_backend.media.files import remove_partial_files

    removed = remove_partial_files()
    if removed:
        log.info("removed %d partial output file(s): %s", len(removed), ", ".join(removed))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

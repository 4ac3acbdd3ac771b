"""Optional torch.profiler traces of pipeline calls, to find where serving time goes.

With ``DIFFUSERS_PROFILE_DIR`` set, every pipeline call the engine makes runs under
``torch.profiler`` and leaves two files in that folder: ``call-N.json`` (a Chrome trace:
open it in chrome://tracing or Perfetto) and ``call-N.txt`` (the operators that took the
most time, CPU and device). Off by default: profiling slows every call down.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
_numbers = itertools.count(1)


@contextmanager
def profiled(folder: str, label: str) -> Iterator[None]:
    """Profile the block when ``folder`` is set; write its trace and summary there."""
    if not folder:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=False) as prof:
        yield
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    stem = target / f"call-{next(_numbers)}"
    prof.export_chrome_trace(str(stem.with_suffix(".json")))
    sort_by = "cuda_time_total" if len(activities) > 1 else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=30)
    stem.with_suffix(".txt").write_text(f"{label}\n\n{table}\n")
    log.info("profile of %s written to %s.{json,txt}", label, stem)

"""How many images one pipeline call may make: ``DIFFUSERS_MAX_BATCH``, and on a GPU what the
free memory holds, learned from the first calls.

Each call's peak memory above what was allocated before it is measured (CUDA's peak counter)
and divided by its images x pixels; the largest figure seen is the cost of one pixel. A batch
then gets as many images as 90 % of the free memory (the driver's free plus what torch has
cached) can hold. An out-of-memory at some size lowers the figure. Without CUDA the fixed
count alone applies.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MEASURED_CALLS = 4  # the first calls are measured; after that the figure is known
HEADROOM = 0.9


def _cuda() -> Any:
    """torch.cuda when torch is imported and a CUDA context exists, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _free_bytes() -> int:
    cuda = _cuda()
    if cuda is None:
        return 0
    free, _total = cuda.mem_get_info()
    return int(free + cuda.memory_reserved() - cuda.memory_allocated())


class BatchSizer:
    """The batch limit for a given image size; see the module docstring."""

    def __init__(self, max_batch: int, free_bytes: Callable[[], int] = _free_bytes) -> None:
        self.max_batch = max_batch
        self.bytes_per_pixel: float | None = None
        self._free_bytes = free_bytes
        self._measured = 0

    def limit(self, pixels: int) -> int:
        """Images of ``pixels`` pixels one call may make."""
        if self.bytes_per_pixel is None or pixels <= 0:
            return self.max_batch
        fits = int(self._free_bytes() * HEADROOM / (self.bytes_per_pixel * pixels))
        return max(1, min(self.max_batch, fits))

    def observe(self, images: int, pixels: int, peak_bytes: int) -> None:
        """A call of ``images`` x ``pixels`` needed ``peak_bytes`` above its start."""
        if images <= 0 or pixels <= 0 or peak_bytes <= 0:
            return
        per_pixel = peak_bytes / (images * pixels)
        self.bytes_per_pixel = max(self.bytes_per_pixel or 0.0, per_pixel)
        self._measured += 1

    def out_of_memory(self, images: int, pixels: int) -> None:
        """``images`` did not fit: never plan that many again at this size."""
        if images <= 1 or pixels <= 0:
            return
        free = self._free_bytes()
        if free > 0:
            floor = free * HEADROOM / ((images - 1) * pixels)
            self.bytes_per_pixel = max(self.bytes_per_pixel or 0.0, floor)

    @contextmanager
    def measure(self, images: int, pixels: int) -> Iterator[None]:
        """Measure the peak of the call run inside (first calls on CUDA only)."""
        cuda = _cuda() if self._measured < MEASURED_CALLS else None
        if cuda is None:
            yield
            return
        cuda.reset_peak_memory_stats()
        before = cuda.memory_allocated()
        yield
        self.observe(images, pixels, int(cuda.max_memory_allocated() - before))

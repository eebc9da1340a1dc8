"""Giving a retired engine's memory back to the operating system.

A live reload loads the new version next to the old one and shuts the old one down once drained.
Its tensors are freed, but glibc keeps freed heap pages that live allocations of other threads
(requests in flight) sit between, so in the soak benchmark (benchmarks/serve_soak.py, the default
model on the CPU, an alias reload every 2 minutes) the server's RSS floor rose from 1.85 to 2.66 GB
over the first reloads. Two measures, both glibc-only (no-ops elsewhere):

- `weights_outside_the_heap()` around a model load: allocations of 1 MiB and more (weight tensors)
  are mmap'd, so freeing them unmaps them whatever else lives in the heap; afterwards the threshold
  goes to glibc's dynamic maximum (32 MiB), so a step's activations still come from the heap
  (an mmap per step would cost page faults). The soak with this stays at its first floor (1.70 GB).
- `release_freed_memory()` after an engine is closed: `malloc_trim(0)` returns free heap pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("tuneloop.serve")

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
WEIGHTS_MMAP_BYTES = 1 << 20
STEADY_MMAP_BYTES = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where the dynamic threshold ends up


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):  # musl (Alpine) has neither: nothing to tune this way
        return None
    return libc


_LIBC = _libc()
_loading = 0  # loads in progress (reloads may overlap a start-up's)
_lock = threading.Lock()


@contextmanager
def weights_outside_the_heap() -> Iterator[None]:
    """Allocate what is loaded inside (model weights) with mmap, so it leaves no holes in the heap."""
    global _loading
    if _LIBC is None:
        yield
        return
    with _lock:
        _loading += 1
        _LIBC.mallopt(M_MMAP_THRESHOLD, WEIGHTS_MMAP_BYTES)
    try:
        yield
    finally:
        with _lock:
            _loading -= 1
            if not _loading:
                _LIBC.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_BYTES)


def release_freed_memory() -> None:
    """Collect cycles, then hand free heap pages back to the OS (glibc). Blocking: call from a worker thread."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

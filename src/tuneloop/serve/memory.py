"""Giving freed memory back to the operating system after an engine is retired.

A live reload loads the new version next to the old one and shuts the old one down once drained.
Its tensors are freed, but glibc keeps the pages of the arenas its threads allocated in (the engine's
stepping thread, the tokenizer's), so the server's RSS grew by a model's size with every reload in
the soak benchmark (benchmarks/serve_soak.py: +1 GiB per reload of the default model on the CPU,
flat after `malloc_trim`). `malloc_trim(0)` returns every arena's free pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger("tuneloop.serve")


def _libc_trim():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl (Alpine) has no malloc_trim: nothing to give back this way
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _libc_trim()


def release_freed_memory() -> None:
    """Collect cycles, then hand free heap pages back to the OS (glibc); a no-op elsewhere. Blocking:
    call from a worker thread."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)

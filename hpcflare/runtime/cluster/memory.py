"""Give freed memory back to the OS so RSS stays flat over many rounds.

CPython frees large arrays with free(), but glibc keeps the pages in its arenas; malloc_trim(0) returns
them. Ranks also run with MALLOC_ENV below, so many threads do not each grow an arena of their own and
large buffers never linger in the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}
"""glibc settings for every rank (LocalEnv sets them, the sbatch template exports them): few arenas for
many threads, and tensors (>= 4 MiB) in their own mappings, returned to the OS the moment they are freed."""

_libc = None


def _malloc_trim() -> bool:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            _libc = False
    return bool(_libc) and bool(_libc.malloc_trim(0))


def release_memory() -> bool:
    """gc.collect() then malloc_trim(0); True if glibc returned memory to the OS."""
    gc.collect()
    return _malloc_trim()

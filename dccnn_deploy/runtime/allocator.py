"""Heap settings for a registration process (glibc's ``malloc``; elsewhere nothing changes).

glibc serves every allocation above a sliding threshold (at most 32 MiB) with a fresh ``mmap``
and returns it to the kernel on ``free``; a 2 mm feature map is 3-25 MB and a 1 mm field 86 MB,
so every network step and output map starts on new pages that the kernel faults in and zeroes.
Keeping freed blocks in the heap for reuse (no ``mmap`` for large blocks, no trimming of the
heap's top) cut the page faults of a 1 mm ``dccnn register`` from ~0.9 M to ~0.25 M and its
system CPU time from ~3 s to ~1 s, at ~+50 MB peak RSS (docs/benchmarks.md, issue 12).

The ``dccnn`` commands that register images call :func:`tune_allocator` before torch is
imported; a Python program using the API may call it too (it changes the whole process's heap).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: heap top kept when blocks are freed (bytes; glibc's default is 128 KiB)
TRIM_THRESHOLD = 1 << 30
#: extra bytes requested from the kernel each time the heap grows (virtual until touched)
TOP_PAD = 64 << 20


def tune_allocator() -> bool:
    """Apply the heap settings above; True when glibc accepted all of them, False on other C
    libraries or platforms (nothing is changed there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library (no search, no subprocess)
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)


__all__ = ["tune_allocator", "TRIM_THRESHOLD", "TOP_PAD"]

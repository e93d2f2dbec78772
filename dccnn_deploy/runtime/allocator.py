"""Heap settings for a registration process (glibc's ``malloc``; elsewhere nothing changes).

glibc serves every allocation above a sliding threshold (at most 32 MiB) with a fresh ``mmap``
and returns it to the kernel on ``free``; a 2 mm feature map is 3-25 MB and a 1 mm field 86 MB,
so every network step and output map starts on new pages that the kernel faults in and zeroes.
Keeping freed blocks in the heap for reuse (no ``mmap`` for large blocks, no trimming of the
heap's top) cut the page faults of a 1 mm ``dccnn register`` from ~0.9 M to ~0.25 M and its
system CPU time from ~3 s to ~1 s, at ~+50 MB peak RSS (docs/benchmarks.md, issue 12).

All threads share that one heap (one malloc arena), so that a block freed by one thread (a
reader, an output writer, a kernel thread) serves the next allocation of any other.

Fresh pages are expensive on a virtual machine: the host backs each one on its first touch.
On the 2-core VM a first touch ran at 0.45-2.5 GB/s against ~35 GB/s for a page already backed,
so a 1 mm registration spent 1-2 s of system time faulting in the ~650 MB its arrays need.
:func:`prefault_heap` touches such a block once, on a core that is otherwise idle (``dccnn
register`` does it on its reading thread while the main thread imports torch), and frees it:
the heap keeps the pages, and the registration's arrays later reuse them.

The ``dccnn`` commands that register images call :func:`tune_allocator` before torch is
imported; a Python program using the API may call it too (it changes the whole process's heap).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: heap top kept when blocks are freed (bytes; glibc's default is 128 KiB)
TRIM_THRESHOLD = 1 << 30
#: extra bytes requested from the kernel each time the heap grows (virtual until touched)
TOP_PAD = 64 << 20
#: the largest block :func:`prefault_heap` touches: freed at the heap's top with the pad, it must
#: stay below the trim threshold, or glibc would hand it back to the kernel at once
MAX_PREFAULT = TRIM_THRESHOLD - 2 * TOP_PAD

_tuned = False


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
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD), (_M_ARENA_MAX, 1))
    global _tuned
    _tuned = all([mallopt(param, value) == 1 for param, value in settings])
    return _tuned


def prefault_heap(nbytes: int) -> int:
    """Allocate a block of ``nbytes`` (at most :data:`MAX_PREFAULT` and a quarter of the free
    memory), write every page of it and free it, in the calling thread: the heap keeps the pages
    for the allocations that follow. Returns the bytes touched: 0 unless :func:`tune_allocator`
    succeeded in this process (elsewhere a freed block may go straight back to the kernel)."""
    if not _tuned or nbytes <= 0:
        return 0
    try:
        free_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
    nbytes = min(int(nbytes), MAX_PREFAULT, free_bytes // 4)
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    libc.memset.restype, libc.memset.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    block = libc.malloc(nbytes)  # ctypes calls release the GIL: the other threads go on meanwhile
    if not block:
        return 0
    libc.memset(block, 0, nbytes)
    libc.free(block)
    return nbytes


__all__ = ["tune_allocator", "prefault_heap", "TRIM_THRESHOLD", "TOP_PAD", "MAX_PREFAULT"]

"""Keep freed host memory in the process while training on a CPU (glibc's malloc only).

A training step frees and allocates the same large activation buffers every step. With glibc's defaults a
buffer above the mmap threshold is mapped for each allocation and unmapped when freed, and free memory at
the top of the heap is trimmed back to the system, so each step page-faults its buffers in again. Raising
the mmap threshold to glibc's maximum and the trim threshold to 1 GiB keeps those buffers on the heap for
the next step. Both must be set: setting either one turns glibc's adaptive mmap threshold off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # glibc's ceiling: 32 MiB on 64-bit
TRIM_THRESHOLD = 1 << 30

_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if they are set, False where the C
    library is not glibc or refuses them (nothing is changed then)."""
    global _kept
    if _kept is None:
        _kept = _set_thresholds()
    return _kept


def _set_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, so a refused one leaves the trim default
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""CPU training keeps freed buffers on the heap (glibc): checked through malloc's own statistics."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")

# Allocates and frees one 16 MiB block, in a fresh process (the thresholds are process-wide and final), and
# prints whether it was mapped apart from the heap and whether the heap still holds it after the free.
PROBE = """
import ctypes, sys
from sddcompress.engine.host_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once per process, idempotent
size = 16 << 20
mapped_before = libc.mallinfo2().hblks
block = libc.malloc(size)
ctypes.memset(block, 1, size)
mapped = libc.mallinfo2().hblks > mapped_before
libc.free(block)
print(mapped, libc.mallinfo2().arena >= size)
"""


def _probe(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()


def test_freed_buffers_stay_on_the_heap_once_kept():
    assert _probe("default") == ["True", "False"]  # glibc's defaults: mapped apart, returned when freed
    assert _probe("keep") == ["False", "True"]  # kept: on the heap, and still there after the free

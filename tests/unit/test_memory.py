"""trim_heap gives freed heap pages back to the kernel (glibc's malloc_trim)."""

from __future__ import annotations

from pathlib import Path

from podling.oslib.memory import trim_heap


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_freed_heap_below_a_live_allocation_is_returned() -> None:
    trim_heap()
    # many small allocations live in malloc's heap, not in mmap'd chunks; one kept above
    # them stops glibc from trimming the heap's top by itself when they are freed
    chunks = [bytes(4000) for _ in range(20000)]  # ~80 MB
    pin = bytes(4000)
    high = _rss_kb()
    del chunks
    kept = _rss_kb()
    assert kept > high - 20_000, "glibc gave the memory back by itself: nothing to test"
    assert trim_heap() is True
    assert _rss_kb() < kept - 40_000  # most of the 80 MB went back
    del pin

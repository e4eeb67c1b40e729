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


_ARENAS = """
import ctypes, sys, threading
from podling.oslib.memory import limit_arenas
if sys.argv[1] != "-": assert limit_arenas(int(sys.argv[1]))
together = threading.Barrier(6)  # all alive at once: no arena is handed down
def work(): kept = [bytes(100) for _ in range(1000)]; together.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def _arenas(limit: str) -> int:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _ARENAS, limit], capture_output=True, text=True, check=True
    )
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_arenas_are_capped() -> None:
    # glibc gives each new thread an arena of its own until the cap (malloc_stats lists them)
    assert _arenas("-") > 2
    assert _arenas("2") <= 2

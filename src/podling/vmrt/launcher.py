"""The container's "init" process as conmon sees it: forked by `create`, it keeps
conmon's stdio, blocks on the `start` fifo, then runs qemu and exits with the
container's exit code.

Exit code: what the guest wrote to guest/exit (the process's code, 128+n for a signal
inside the guest); else, when the launcher was told to stop (SIGTERM/SIGINT/SIGHUP) and
stopped qemu, 128+n as runc reports a signalled process; else 255 with the reason on
stderr (the container log). qemu gets PDEATHSIG=SIGKILL, so a SIGKILLed launcher takes
its guest with it and conmon records 137.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from podling.vmrt.qemu import GUEST_DIR

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stopped(Exception):
    pass


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(state_dir: Path, argv: list[str], netns: str) -> int:
    """Fork the launcher; returns its pid. The child never returns."""
    pid = os.fork()
    if pid:
        return pid
    code = 255
    try:
        code = run(state_dir, argv, netns)
    except BaseException as e:  # the child must end here whatever happens
        with contextlib.suppress(Exception):
            print(f"podling-vmrt: {e}", file=sys.stderr, flush=True)
    os._exit(code)


def run(state_dir: Path, argv: list[str], netns: str) -> int:
    """Wait for `start`, run qemu (inside `netns` when given) and map its end to an exit
    code."""
    os.chdir(state_dir)
    stopped: list[int] = []
    qemu: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)
        if not qemu:
            raise _Stopped
        qemu[0].terminate()

    for s in _STOP_SIGNALS:
        signal.signal(s, on_signal)
    try:
        with open("start", "rb") as fifo:  # blocks until `start` opens it for writing
            fifo.read(1)
        if netns:
            argv = ["nsenter", f"--net={netns}", *argv]
        qemu.append(subprocess.Popen(argv, preexec_fn=_die_with_parent))
        qemu[0].wait()
    except _Stopped:
        return 128 + stopped[0]
    return exit_code(state_dir, stopped, qemu[0].returncode)


def exit_code(state_dir: Path, stopped: list[int], qemu_status: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int((state_dir / GUEST_DIR / "exit").read_text().strip()) & 0xFF
    if stopped:
        return 128 + stopped[0]
    print(
        f"podling-vmrt: the guest ended without an exit code (qemu status {qemu_status}); "
        f"see {state_dir / 'console.log'}",
        file=sys.stderr,
        flush=True,
    )
    return 255

"""Crash points: a test hook that kills the daemon with SIGKILL at a named point.

The crash-consistency harness (tests/reliability/test_crash_consistency.py) starts
podlingd with `PODLING_CRASH_AT=<point>` or `<point>#<n>` (the n-th time that point is
passed in this process); on reaching it the daemon kills itself with SIGKILL: a real
`kill -9`, no cleanup, no flushed state beyond what is already on disk.

Every multi-step operation passes points: `Steps.step` (services/rollback.py) passes
`<operation>/<step>/before` and `.../after` around each step, and the operations that do
not use Steps pass explicit points between their side effects and their record updates
(`EXPLICIT` lists those; the harness fails if its workload misses one). Each point passed
is logged at debug level ("crash point passed: <name>") so the harness can discover the
names its workload reaches.

This is the one piece of module-level state in the daemon, set once at start by the
composition root (cli/daemon.py, `arm`). Unarmed (the variable unset, the normal case),
`reach` only writes the debug line.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from dataclasses import dataclass

from podling.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "PODLING_CRASH_AT"

# the points outside Steps, in workload order (Steps points are named by their step)
EXPLICIT: tuple[str, ...] = (
    "PullImage/config stored",
    "PullImage/manifest stored",
    "PullImage/blob stored",
    "ImportImage/layer extracted",
    "ImportImage/layer committed",
    "ImportImage/record the image/before",
    "ImportImage/record the image/after",
    "StartContainer/runtime started",
    "StopContainer/signalled",
    "RemoveContainer/stopped",
    "RemoveContainer/runtime deleted",
    "RemoveContainer/files removed",
    "RemoveContainer/record deleted",
    "StopPodSandbox/containers stopped",
    "StopPodSandbox/infra removed",
    "StopPodSandbox/network removed",
    "StopPodSandbox/released",
    "RemovePodSandbox/stopped",
    "RemovePodSandbox/containers removed",
    "RemovePodSandbox/files removed",
    "RemovePodSandbox/record deleted",
    "RemoveImage/record deleted",
    "RemoveImage/collected",
)


@dataclass(frozen=True)
class Target:
    name: str
    nth: int = 1


def parse(spec: str) -> Target | None:
    """`name` or `name#n` (n >= 1) → Target; "" → None; ConfigError otherwise."""
    if not spec:
        return None
    name, sep, nth = spec.partition("#")
    if not name or (sep and (not nth.isdigit() or int(nth) < 1)):
        raise ConfigError(
            f"{ENV}={spec!r}: expected '<point>' or '<point>#<n>' with n >= 1; unset it to "
            "run normally"
        )
    return Target(name, int(nth) if sep else 1)


class _Points:
    def __init__(self) -> None:
        self.target: Target | None = None
        self.passed: Counter[str] = Counter()

    def reach(self, name: str) -> None:
        log.debug("crash point passed: %s", name)
        if self.target is None or name != self.target.name:
            return
        self.passed[name] += 1
        if self.passed[name] == self.target.nth:
            log.warning("crash point reached, killing the daemon: %s#%d", name, self.target.nth)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)


_POINTS = _Points()


def arm(spec: str) -> None:
    """Set the crash target from `spec` (see `parse`); called once, at daemon start."""
    _POINTS.target = parse(spec)
    _POINTS.passed.clear()
    if _POINTS.target is not None:
        log.warning("%s=%s: the daemon will kill itself there (a test hook)", ENV, spec)


def reach(name: str) -> None:
    """Pass crash point `name`: kills the process if it is the armed target."""
    _POINTS.reach(name)

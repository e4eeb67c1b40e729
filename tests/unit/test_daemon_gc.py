"""The daemon's start-up heap is kept out of the cyclic collector's full collections."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from podling.cli import daemon


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as before


class FakeApp:
    """Starts, has the daemon told to stop (SIGTERM, as systemd does), records what the
    collector sees when it stops."""

    def __init__(self) -> None:
        self.frozen_at_stop = -1
        self.tracked_at_stop = -1

    async def start(self) -> None:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        self.frozen_at_stop = gc.get_freeze_count()
        self.tracked_at_stop = len(gc.get_objects())

    async def reload(self, loader: Any) -> None:
        raise AssertionError("not reloaded in this test")


def test_objects_alive_after_start_are_frozen(
    monkeypatch: pytest.MonkeyPatch, unfrozen_afterwards: None
) -> None:
    app = FakeApp()
    monkeypatch.setattr(daemon.app_mod, "build", lambda cfg: app)
    monkeypatch.setattr(daemon, "use_pidfd_child_watcher", lambda: None)
    before = len(gc.get_objects())
    asyncio.run(daemon._serve(object(), object()))  # type: ignore[arg-type]
    # the test process's whole heap (pytest, podling, cri_api: tens of thousands of
    # objects) is frozen; a full collection walks only what was made after start
    assert before > 20_000
    assert app.frozen_at_stop >= before // 2
    assert app.tracked_at_stop < before // 10

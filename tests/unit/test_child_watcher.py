"""The daemon waits for its many short-lived children without a thread per child."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

import pytest

from podling.cli.daemon import use_pidfd_child_watcher


@pytest.fixture
def default_watcher_afterwards() -> Iterator[None]:
    yield
    if sys.version_info < (3, 12):
        asyncio.set_child_watcher(None)  # back to asyncio's default for other tests


def test_children_are_awaited_without_a_thread_each(default_watcher_afterwards: None) -> None:
    seen: set[str] = set()

    async def main() -> list[int]:
        use_pidfd_child_watcher()
        procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(3)]
        seen.update(t.name for t in threading.enumerate())
        return [await p.wait() for p in procs]

    assert asyncio.run(main()) == [0, 0, 0]
    # asyncio's threaded watcher names its threads asyncio-waitpid-<n>, one per running child
    assert not [name for name in seen if name.startswith("asyncio-waitpid-")]

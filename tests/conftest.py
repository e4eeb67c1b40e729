"""Shared fixtures: the leak check that every integration and e2e test runs under."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests import leaks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (real mounts, runtimes, registries)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_leaks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Fail any integration/e2e test that leaves a mount, netns, cgroup, process, iptables
    rule or bridge behind. Unit tests touch none of these and skip the (slow) snapshot."""
    path = str(request.node.path)
    if "/tests/unit/" in path:
        yield
        return
    session_tmp = str(tmp_path_factory.getbasetemp()) + "/"
    before = leaks.snapshot(session_tmp)
    yield
    # processes we stopped may take a moment to be reaped
    deadline = time.monotonic() + 5
    while True:
        found = leaks.leaked(before, leaks.snapshot(session_tmp), request.node.path)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if found:
        pytest.fail("test left behind: " + "; ".join(found), pytrace=False)

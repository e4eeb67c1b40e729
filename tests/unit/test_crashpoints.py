"""Crash points: parsing PODLING_CRASH_AT, killing at the n-th pass, inert when unarmed,
and the points Steps passes around each step."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator

import pytest

from podling import crashpoints
from podling.errors import ConfigError, InvalidArgument
from podling.services.rollback import Steps
from podling.services.unpacking import EXTRACT_PREFIX, drop_unfinished_extractions


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """os.kill recorded instead of done; the registry disarmed afterwards."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    yield sent
    crashpoints.arm("")


def test_parse() -> None:
    assert crashpoints.parse("") is None
    assert crashpoints.parse("A/b/before") == crashpoints.Target("A/b/before", 1)
    assert crashpoints.parse("A/b#3") == crashpoints.Target("A/b", 3)
    for bad in ("#2", "A#", "A#0", "A#x"):
        with pytest.raises(ConfigError, match="PODLING_CRASH_AT"):
            crashpoints.parse(bad)


def test_kills_itself_at_the_nth_pass(kills: list[tuple[int, int]]) -> None:
    crashpoints.arm("Op/x#2")
    crashpoints.reach("Op/x")
    crashpoints.reach("Op/y")
    assert kills == []
    crashpoints.reach("Op/x")
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_unarmed_only_logs(kills: list[tuple[int, int]], caplog: pytest.LogCaptureFixture) -> None:
    crashpoints.arm("")
    with caplog.at_level(logging.DEBUG, logger="podling.crashpoints"):
        for _ in range(3):
            crashpoints.reach("Op/x")
    assert kills == []
    assert caplog.messages == ["crash point passed: Op/x"] * 3


async def test_steps_pass_points_around_each_step(
    kills: list[tuple[int, int]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="podling.crashpoints"):
        async with Steps("Make") as steps:
            async with steps.step("one"):
                pass
            with pytest.raises(InvalidArgument):
                async with steps.step("two"):
                    raise InvalidArgument("bad")
    passed = [m.removeprefix("crash point passed: ") for m in caplog.messages]
    # a failed step has no "after": the daemon did not get past it
    assert passed == ["Make/one/before", "Make/one/after", "Make/two/before"]


async def test_steps_kill_before_the_step_runs(kills: list[tuple[int, int]]) -> None:
    crashpoints.arm("Make/one/before")
    async with Steps("Make") as steps, steps.step("one"):
        assert kills == [(os.getpid(), signal.SIGKILL)]  # already, inside the step


class FakeSnapshotter:
    def __init__(self, keys: list[str]) -> None:
        self._keys = keys

    def keys(self) -> list[str]:
        return list(self._keys)

    def remove(self, key: str) -> None:
        self._keys.remove(key)


def test_drop_unfinished_extractions() -> None:
    snap = FakeSnapshotter([f"{EXTRACT_PREFIX}abc", "sha256:1", "ct-x", f"{EXTRACT_PREFIX}d"])
    drop_unfinished_extractions(snap)  # type: ignore[arg-type]
    assert snap.keys() == ["sha256:1", "ct-x"]

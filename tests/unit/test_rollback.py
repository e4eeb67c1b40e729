from __future__ import annotations

import asyncio

import pytest

from podling.errors import Internal, NotFound
from podling.services.container_create import RUNTIME_CREATE_STEP, is_runtime_failure
from podling.services.rollback import Steps


async def test_failure_undoes_in_reverse_and_names_the_step() -> None:
    done: list[str] = []

    async def async_undo() -> None:
        done.append("b")

    with pytest.raises(NotFound, match=r"^Op: third failed: gone$"):
        async with Steps("Op") as steps:
            async with steps.step("first"):
                pass
            steps.undo("undo a", lambda: done.append("a"))
            steps.undo("undo b", async_undo)
            async with steps.step("third"):
                raise NotFound("gone")
    assert done == ["b", "a"]


async def test_unexpected_errors_become_internal_and_undo_continues_past_a_failing_undo() -> None:
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("undo broke")

    with pytest.raises(Internal, match="Op: x failed: ValueError: bad"):
        async with Steps("Op") as steps:
            steps.undo("a", lambda: done.append("a"))
            steps.undo("broken", broken)
            async with steps.step("x"):
                raise ValueError("bad")
    assert done == ["a"]


async def test_commit_keeps_everything() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError):
        async with Steps("Op") as steps:
            steps.undo("a", lambda: done.append("a"))
            steps.commit()
            raise RuntimeError("after commit")
    assert done == []


async def test_cancellation_still_undoes() -> None:
    done: list[str] = []
    started = asyncio.Event()

    async def op() -> None:
        async with Steps("Op") as steps:
            steps.undo("a", lambda: done.append("a"))
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(op())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["a"]


async def test_the_failed_step_is_recorded_on_the_error() -> None:
    with pytest.raises(NotFound) as caught:
        async with Steps("Op") as steps, steps.step(RUNTIME_CREATE_STEP.format(handler="crun")):
            raise NotFound("no such binary")
    assert caught.value.step == "create the container (crun under conmon)"
    assert is_runtime_failure(caught.value)
    with pytest.raises(Internal) as other:
        async with Steps("Op") as steps, steps.step("build the OCI spec"):
            raise ValueError("bad")
    assert other.value.step == "build the OCI spec"
    assert not is_runtime_failure(other.value)
    assert not is_runtime_failure(NotFound("raised outside any step"))


async def test_a_full_disk_in_a_step_is_resource_exhausted() -> None:
    import errno

    from podling.errors import ResourceExhausted

    with pytest.raises(ResourceExhausted) as caught:
        async with Steps("Op") as steps, steps.step("write config.json"):
            raise OSError(errno.ENOSPC, "No space left on device", "/run/podling/x/config.json")
    msg = caught.value.message
    assert "Op: write config.json" in msg and "/run/podling/x/config.json" in msg
    assert caught.value.step == "write config.json"


async def test_together_waits_for_every_part_and_undoes_what_each_made() -> None:
    done: list[str] = []
    slow_finished = asyncio.Event()

    async def slow(steps: Steps) -> None:
        async with steps.step("slow"):
            await asyncio.sleep(0.05)  # still running when "fast" fails
        steps.undo("undo slow", lambda: done.append("slow"))
        slow_finished.set()

    async def fast(steps: Steps) -> None:
        async with steps.step("fast"):
            raise NotFound("no such thing")

    async def other(steps: Steps) -> None:
        async with steps.step("other"):
            pass
        steps.undo("undo other", lambda: done.append("other"))

    with pytest.raises(NotFound, match="Op: fast failed"):
        async with Steps("Op") as steps:
            steps.undo("undo before", lambda: done.append("before"))
            await steps.together(slow(steps), fast(steps), other(steps))
    assert slow_finished.is_set()
    # the parts' undos (in the order they were registered, reversed), then what came before
    assert done == ["slow", "other", "before"]


async def test_together_with_every_part_succeeding_keeps_going() -> None:
    async with Steps("Op") as steps:
        made: list[str] = []

        async def part(name: str) -> None:
            async with steps.step(name):
                made.append(name)

        await steps.together(part("a"), part("b"))
        steps.commit()
    assert sorted(made) == ["a", "b"]

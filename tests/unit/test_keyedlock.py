from __future__ import annotations

import asyncio

from podling.keyedlock import KeyedLocks


async def test_same_key_serialises_other_keys_do_not() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []

    async def work(key: str, name: str, delay: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(delay)
            order.append(f"{name}-")

    await asyncio.gather(work("a", "a1", 0.02), work("a", "a2", 0), work("b", "b1", 0))
    assert order.index("a1-") < order.index("a2+")  # a2 waited for a1
    assert order.index("b1+") < order.index("a1-")  # b did not wait for a
    assert len(locks) == 0  # nothing kept once nobody holds or waits


async def test_released_on_error() -> None:
    locks: KeyedLocks[int] = KeyedLocks()
    try:
        async with locks.hold(1):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with locks.hold(1):
        pass

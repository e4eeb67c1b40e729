"""Multi-step creates that undo themselves: every step registers its undo right after it
succeeds; a failure (or a cancelled RPC) runs the undos in reverse order.

    async with Steps("RunPodSandbox") as steps:
        async with steps.step("pin namespaces"):
            ns = pin(...)
        steps.undo("unpin namespaces", lambda: unpin(ns))
        ...
        steps.commit()          # from here on nothing is undone

A failing step's error keeps its gRPC code and gains the step's name, so the operator
reads *which* step failed ("RunPodSandbox: CNI ADD failed: ...").
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType

from podling import crashpoints, diskspace
from podling.errors import Internal, PodlingError

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None] | None]


class Steps:
    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._undos: list[tuple[str, Undo]] = []
        self._committed = False

    def undo(self, name: str, fn: Undo) -> None:
        self._undos.append((name, fn))

    def commit(self) -> None:
        self._committed = True

    @asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        # the crash-consistency harness may kill the daemon on either side of any step
        crashpoints.reach(f"{self.operation}/{name}/before")
        start = time.perf_counter()
        try:
            yield
        except PodlingError as e:
            raise _at_step(type(e)(f"{self.operation}: {name} failed: {e.message}"), name) from e
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:
            if diskspace.is_full(e):  # e.g. the state dir's filesystem (often /run) is full
                where = getattr(e, "filename", None) or "podling's root or state dir"
                raise _at_step(
                    diskspace.exhausted(where, f"{self.operation}: {name}", e), name
                ) from e
            log.exception("%s: %s failed", self.operation, name)
            err = Internal(f"{self.operation}: {name} failed: {type(e).__name__}: {e}")
            raise _at_step(err, name) from e
        # at debug level, where a slow create spends its time, step by step
        log.debug("%s: %s took %.1f ms", self.operation, name, (time.perf_counter() - start) * 1e3)
        crashpoints.reach(f"{self.operation}/{name}/after")

    async def together(self, *parts: Awaitable[None]) -> None:
        """Run independent `parts` (each a series of step()/undo() calls on these Steps)
        at once. All of them finish, failed or not, before the first failure is raised, so
        the undo of everything any part made is registered when the rollback runs."""
        results = await asyncio.gather(*parts, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for other in failures[1:]:
            log.warning("%s: another step failed at the same time: %s", self.operation, other)
        if failures:
            raise failures[0]

    async def __aenter__(self) -> Steps:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None or self._committed:
            return
        # shielded: a cancelled RPC must still clean up everything it made
        await asyncio.shield(self._run_undos())

    async def _run_undos(self) -> None:
        for name, fn in reversed(self._undos):
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # keep undoing the rest: one stuck resource must not leak all the others
                log.exception("%s: rollback step %r failed", self.operation, name)
        self._undos.clear()


def _at_step(err: PodlingError, name: str) -> PodlingError:
    err.step = name
    return err

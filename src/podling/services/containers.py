"""Start, stop, remove, update, reopen logs, and the exit of containers.

State moves created → running → exited. Exits are learnt from conmon's exit files
(services/exits.py calls `on_exit`); StopContainer waits for that, not for the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling import crashpoints
from podling.errors import FailedPrecondition, NotFound, PodlingError
from podling.metrics import Metrics
from podling.oslib.mount import unmount
from podling.runtimes import spec_resources
from podling.runtimes.conmon import Conmon, ExitInfo, wait_gone
from podling.runtimes.handlers import Handler
from podling.services import validate
from podling.services.container_create import (
    CreateDeps,
    create_container,
    is_runtime_failure,
    release_image_volumes,
)
from podling.services.events import DELETED, STARTED, STOPPED, Event
from podling.store.pods import CT_CREATED, CT_EXITED, CT_RUNNING, ContainerRecord

log = logging.getLogger(__name__)


def signal_number(name: str) -> int:
    """'SIGTERM', 'TERM' or '15' → 15; unknown names fall back to SIGTERM."""
    name = name.upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        return int(signal.SIGTERM)


class ContainerService:
    def __init__(self, deps: CreateDeps) -> None:
        self.deps = deps
        self.store = deps.store
        # exit files, log reopening and resizing are conmon's, whatever the runtime
        self.conmon: Conmon = deps.conmon
        self.runtime = deps.conmon.runtime  # the default handler's
        self._exited: dict[str, asyncio.Event] = {}
        self._starting: dict[str, ExitInfo | None] = {}
        # called after a container is removed (the image service sweeps unused snapshots)
        self.after_remove: Callable[[], Awaitable[None]] | None = None
        self.metrics: Metrics | None = None  # set by the app: OOM kills, runtime failures

    async def create(self, pod_id: str, config: pb.ContainerConfig) -> str:
        try:
            return await create_container(self.deps, pod_id, config)
        except PodlingError as e:
            # only the conmon/runtime step counts, not bad requests (Steps names the step)
            if self.metrics is not None and is_runtime_failure(e):
                self.metrics.runtime_failures.inc("create")
            raise

    def handler(self, rec: ContainerRecord) -> Handler:
        """The runtime handler the container's pod runs with."""
        return self.deps.handlers.lookup(rec.runtime_handler)

    def get(self, cid: str, shared: bool = False) -> ContainerRecord:
        """The container by id or unique id prefix; NotFound otherwise. `shared`: the
        store's cached record, which the caller must not change (PodStore.pods)."""
        full = self.store.resolve_id("containers", validate.require(cid, "container_id"))
        rec = self.store.get_container(full, shared) if full else None
        if rec is None:
            raise NotFound(f"container {cid} not found")
        return rec

    def find(self, cid: str) -> ContainerRecord | None:
        try:
            return self.get(cid)
        except NotFound:
            return None

    async def start(self, cid: str) -> None:
        rec = self.get(cid)
        if rec.state != CT_CREATED:
            raise FailedPrecondition(
                f"container {rec.id} is {rec.state}, not created: only a created container "
                "can be started"
            )
        # An exit seen while `runtime start` runs is held back until the container is
        # recorded as running, so the record and the events keep their order.
        self._starting[rec.id] = None
        try:
            try:
                await self.handler(rec).runtime.start(rec.id)
            except PodlingError:
                if self.metrics is not None:
                    self.metrics.runtime_failures.inc("start")
                raise
            crashpoints.reach("StartContainer/runtime started")
            rec.state, rec.started_ns = CT_RUNNING, time.time_ns()
            self.store.update_container(rec)
            self.deps.events.publish(Event(STARTED, rec.id, rec.pod_id, rec.started_ns))
        finally:
            early = self._starting.pop(rec.id, None)
        # a very short-lived process may have exited before we marked it running
        info = early or self.conmon.exit_info(self.deps.paths.exits, rec.id, Path(rec.bundle))
        if info is not None:
            self.on_exit(rec.id, info)

    def on_exit(self, cid: str, info: ExitInfo) -> None:
        """Record an exit reported by conmon's exit file (idempotent)."""
        if cid in self._starting:
            self._starting[cid] = info  # start() records it once the start is recorded
            return
        rec = self.store.get_container(cid)
        if rec is None or rec.state == CT_EXITED:
            return
        rec.state, rec.exit_code = CT_EXITED, info.exit_code
        rec.finished_ns = info.finished_at_ns
        rec.started_ns = rec.started_ns or info.finished_at_ns
        rec.reason = (
            "OOMKilled" if info.oom_killed else ("Completed" if info.exit_code == 0 else "Error")
        )
        if info.oom_killed and self.metrics is not None:
            self.metrics.ooms.inc()
        self.store.update_container(rec)
        self.deps.events.publish(Event(STOPPED, cid, rec.pod_id, rec.finished_ns))
        self._event(cid).set()

    def _event(self, cid: str) -> asyncio.Event:
        return self._exited.setdefault(cid, asyncio.Event())

    async def stop(self, cid: str, timeout: int) -> None:
        """Stop signal, wait `timeout` seconds, then SIGKILL. A stopped or unknown container
        is fine (CRI: "If the container has already been stopped, the call must not return
        an error")."""
        rec = self.find(cid)
        if rec is None or rec.state == CT_EXITED:
            return
        if rec.state == CT_CREATED:
            # never started: kill what `runtime create` left waiting, and mark it exited
            await self.handler(rec).runtime.kill(rec.id, signal.SIGKILL, all_processes=True)
            await self._wait_exit(rec, 10)
            return
        await self.handler(rec).runtime.kill(rec.id, signal_number(rec.stop_signal))
        crashpoints.reach("StopContainer/signalled")
        if await self._wait_exit(rec, max(0, timeout)):
            return
        await self.handler(rec).runtime.kill(rec.id, signal.SIGKILL, all_processes=True)
        if not await self._wait_exit(rec, 30):
            raise FailedPrecondition(f"container {rec.id} did not exit after SIGKILL")

    async def _wait_exit(self, rec: ContainerRecord, timeout: float) -> bool:
        event = self._event(rec.id)
        deadline = time.monotonic() + timeout
        while True:
            info = self.conmon.exit_info(self.deps.paths.exits, rec.id, Path(rec.bundle))
            if info is not None:
                self.on_exit(rec.id, info)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.1))

    async def remove(self, cid: str) -> None:
        """Kill if needed, delete runtime state, writable layer, bundle and record.
        Unknown is fine (CRI: "must not return an error if the container has already
        been removed")."""
        rec = self.find(cid)
        if rec is None:
            return
        if rec.state in (CT_RUNNING, CT_CREATED):
            await self.stop(rec.id, 0)
        crashpoints.reach("RemoveContainer/stopped")
        await self.handler(rec).runtime.delete(rec.id, force=True)
        await wait_gone(Path(rec.bundle))  # conmon's last write is into the bundle
        crashpoints.reach("RemoveContainer/runtime deleted")
        await asyncio.to_thread(self._remove_files, rec)
        crashpoints.reach("RemoveContainer/files removed")
        self.store.delete_container(rec.id)
        crashpoints.reach("RemoveContainer/record deleted")
        self._exited.pop(rec.id, None)
        self.deps.events.publish(Event(DELETED, rec.id, rec.pod_id, time.time_ns()))
        if self.after_remove is not None:
            await self.after_remove()

    def _remove_files(self, rec: ContainerRecord) -> None:
        release_image_volumes(self.deps.snapshotter, rec.id, Path(rec.bundle))
        unmount(Path(rec.rootfs), detach=True)
        if self.deps.snapshotter.exists(rec.snapshot):
            self.deps.snapshotter.remove(rec.snapshot)
        shutil.rmtree(rec.bundle, ignore_errors=True)
        (self.deps.paths.exits / rec.id).unlink(missing_ok=True)

    async def update_resources(self, cid: str, resources: pb.LinuxContainerResources) -> None:
        rec = self.get(cid)
        if rec.state not in (CT_CREATED, CT_RUNNING):
            raise FailedPrecondition(f"container {rec.id} is {rec.state}: nothing to update")
        validate.memory_limit(resources, "linux")
        warnings: list[str] = []
        update = spec_resources.resources(resources, self.deps.host, warnings)
        for w in warnings:
            log.warning("UpdateContainerResources %s: %s", rec.id, w)
        await self.handler(rec).runtime.update(rec.id, update)

    def reopen_log(self, cid: str) -> None:
        rec = self.get(cid)
        if rec.state != CT_RUNNING:
            raise FailedPrecondition(f"container {rec.id} is not running: its log is closed")
        self.conmon.reopen_log(Path(rec.bundle))

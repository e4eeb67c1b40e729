"""StopPodSandbox, RemovePodSandbox, status and listing; RunPodSandbox is pod_run.py."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling import crashpoints
from podling.errors import NotFound
from podling.oslib import cgroups
from podling.oslib.mount import unmount
from podling.sandbox.namespaces import unpin
from podling.services import validate
from podling.services.containers import ContainerService
from podling.services.events import DELETED, STOPPED, Event
from podling.services.pod_run import PodRunDeps, pinned_of, run_pod
from podling.store.pods import POD_CREATING, POD_NOTREADY, POD_READY, PodRecord

log = logging.getLogger(__name__)


class PodService:
    def __init__(self, deps: PodRunDeps, containers: ContainerService) -> None:
        self.deps = deps
        self.store = deps.store
        self.containers = containers

    async def run(self, config: pb.PodSandboxConfig, handler: str) -> str:
        return await run_pod(self.deps, config, handler)

    def get(self, pod_id: str, shared: bool = False) -> PodRecord:
        """The pod by id or unique id prefix; NotFound otherwise. `shared`: the store's
        cached record, which the caller must not change (PodStore.pods)."""
        full = self.store.resolve_id("pods", validate.require(pod_id, "pod_sandbox_id"))
        rec = self.store.get_pod(full, shared) if full else None
        if rec is None:
            raise NotFound(f"pod sandbox {pod_id} not found")
        return rec

    def find(self, pod_id: str) -> PodRecord | None:
        try:
            return self.get(pod_id)
        except NotFound:
            return None

    async def stop(self, pod_id: str) -> None:
        """Stop every container (grace, then SIGKILL), the infra process, the network.
        Unknown or stopped pods are fine (CRI: "If there are any running containers in
        the sandbox, they must be forcibly terminated" and the call is idempotent)."""
        rec = self.find(pod_id)
        if rec is None:
            return
        grace = int(self.deps.cfg.runtime.stop_timeout)
        await asyncio.gather(
            *(self.containers.stop(c.id, grace) for c in self.store.containers(rec.id))
        )
        if rec.state != POD_NOTREADY:
            crashpoints.reach("StopPodSandbox/containers stopped")
            await self._release(rec)
            crashpoints.reach("StopPodSandbox/released")
            rec.state = POD_NOTREADY
            self.store.update_pod(rec)
            self.deps.events.publish(Event(STOPPED, rec.id, rec.id, time.time_ns()))

    async def _release(self, rec: PodRecord) -> None:
        await self.deps.infra.remove(rec)
        crashpoints.reach("StopPodSandbox/infra removed")
        rec.infra_pid = 0
        netns = rec.namespaces.get("network")
        if netns:
            await self.deps.cni.delete(rec.id, Path(netns))
            crashpoints.reach("StopPodSandbox/network removed")
        if rec.shm_path and rec.shm_path != "/dev/shm":
            await asyncio.to_thread(unmount, Path(rec.shm_path), detach=True)
        await asyncio.to_thread(unpin, pinned_of(rec))

    async def remove(self, pod_id: str) -> None:
        """Stop, then remove containers, namespaces, files, cgroup and the record.
        Unknown is fine (CRI: "must not return an error if the sandbox has already been
        removed")."""
        rec = self.find(pod_id)
        if rec is None:
            return
        await self.stop(rec.id)
        crashpoints.reach("RemovePodSandbox/stopped")
        for c in self.store.containers(rec.id):
            await self.containers.remove(c.id)
        crashpoints.reach("RemovePodSandbox/containers removed")
        own_cgroup = not pb.PodSandboxConfig.FromString(rec.config).linux.cgroup_parent
        await asyncio.to_thread(self._remove_files, rec, own_cgroup)
        crashpoints.reach("RemovePodSandbox/files removed")
        self.store.delete_pod(rec.id)
        crashpoints.reach("RemovePodSandbox/record deleted")
        self.deps.events.publish(Event(DELETED, rec.id, rec.id, time.time_ns()))

    def _remove_files(self, rec: PodRecord, own_cgroup: bool) -> None:
        if own_cgroup:
            cgroups.remove(rec.cgroup_parent)
        shutil.rmtree(rec.pod_dir, ignore_errors=True)

    def list(self, flt: pb.PodSandboxFilter | None) -> list[PodRecord]:
        """The pods `flt` selects: the store's shared records, which callers only read."""
        # a pod still in RunPodSandbox has no id the caller could know yet
        pods = [p for p in self.store.pods(shared=True) if p.state != POD_CREATING]
        if flt is None:
            return pods
        if flt.id:
            pods = [p for p in pods if p.id.startswith(flt.id)]
        if flt.HasField("state"):
            want = (
                POD_READY if flt.state.state == pb.PodSandboxState.SANDBOX_READY else POD_NOTREADY
            )
            pods = [p for p in pods if p.state == want]
        selector = dict(flt.label_selector)
        if selector:
            pods = [p for p in pods if _labels_match(p, selector)]
        return pods


def _labels_match(rec: PodRecord, selector: dict[str, str]) -> bool:
    labels = pb.PodSandboxConfig.FromString(rec.config).labels
    return all(labels.get(k) == v for k, v in selector.items())

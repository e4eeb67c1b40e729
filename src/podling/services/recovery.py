"""Reconcile on start: after a crash or kill -9 of the daemon, pick up where it stopped.

- Containers keep running without the daemon (conmon holds them); exits that happened
  while it was down are read from conmon's exit files.
- Pods and containers caught in the middle of their create ("creating") are undone.
- Bundles and pod dirs that no record names (a crash between side effect and record)
  are cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling.errors import PodlingError
from podling.oslib import cgroups
from podling.oslib.mount import unmount
from podling.sandbox.namespaces import unpin
from podling.services.container_create import release_image_volumes
from podling.services.containers import ContainerService
from podling.services.pod_run import pinned_of
from podling.services.pods import PodService
from podling.store.pods import CT_CREATED, CT_CREATING, CT_RUNNING, POD_CREATING, PodRecord

log = logging.getLogger(__name__)


async def recover(pods: PodService, containers: ContainerService) -> None:
    store = containers.store
    for rec in store.containers():
        if rec.state == CT_CREATING:
            log.warning("removing half-created container", extra={"container": rec.id})
            await _quietly(containers.remove(rec.id))
        elif rec.state in (CT_RUNNING, CT_CREATED):
            await _check_exit(containers, rec.id)
    for pod in store.pods():
        if pod.state == POD_CREATING:
            log.warning("removing half-created pod", extra={"pod": pod.id})
            await _undo_pod(pods, pod)
    await _orphans(pods, containers)


async def _check_exit(containers: ContainerService, cid: str) -> None:
    rec = containers.store.get_container(cid)
    if rec is None:
        return
    info = containers.conmon.exit_info(containers.deps.paths.exits, cid, Path(rec.bundle))
    if info is not None:
        containers.on_exit(cid, info)


async def _undo_pod(pods: PodService, pod: PodRecord) -> None:
    await _quietly(pods.deps.infra.remove(pod))
    netns = pod.namespaces.get("network")
    if netns:
        await _quietly(pods.deps.cni.delete(pod.id, Path(netns)))
    shm = Path(pod.pod_dir) / "shm"
    await asyncio.to_thread(unmount, shm, detach=True)
    await asyncio.to_thread(unpin, pinned_of(pod))
    own = not pb.PodSandboxConfig.FromString(pod.config).linux.cgroup_parent
    if own and pod.cgroup_parent:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(cgroups.remove, pod.cgroup_parent)
    shutil.rmtree(pod.pod_dir, ignore_errors=True)
    pods.store.delete_pod(pod.id)


async def _orphans(pods: PodService, containers: ContainerService) -> None:
    paths = containers.deps.paths
    known_cts = {c.id for c in containers.store.containers()}
    known_infra = {p.infra_id for p in pods.store.pods() if p.infra_id}
    for bundle in list(paths.containers.iterdir()) if paths.containers.exists() else []:
        if bundle.name in known_cts or bundle.name in known_infra:
            continue
        log.warning("removing orphaned bundle", extra={"bundle": str(bundle)})
        for handler in containers.deps.handlers.all():
            await _quietly(handler.runtime.delete(bundle.name, force=True))
        await asyncio.to_thread(unmount, bundle / "rootfs", detach=True)
        snapshotter = containers.deps.snapshotter
        await asyncio.to_thread(release_image_volumes, snapshotter, bundle.name, bundle)
        if snapshotter.exists(f"ct-{bundle.name}"):
            await asyncio.to_thread(snapshotter.remove, f"ct-{bundle.name}")
        shutil.rmtree(bundle, ignore_errors=True)
    known_pods = {p.id for p in pods.store.pods()}
    for pod_dir in list(paths.pods.iterdir()) if paths.pods.exists() else []:
        if pod_dir.name not in known_pods:
            log.warning("removing orphaned pod dir", extra={"dir": str(pod_dir)})
            await asyncio.to_thread(unmount, pod_dir / "shm", detach=True)
            for ns in ("net", "ipc", "uts"):
                await asyncio.to_thread(unmount, pod_dir / "ns" / ns, detach=True)
            shutil.rmtree(pod_dir, ignore_errors=True)


async def _quietly(coro: object) -> None:
    try:
        await coro  # type: ignore[misc]
    except (PodlingError, OSError):
        log.exception("recovery step failed; continuing")

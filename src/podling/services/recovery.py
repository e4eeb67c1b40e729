"""Reconcile on start: after a crash or kill -9 of the daemon, pick up where it stopped.

- Containers keep running without the daemon (conmon holds them); exits that happened
  while it was down are read from conmon's exit files. A container recorded "created"
  that the runtime reports running was started just before the crash: its start is
  completed (recorded running).
- Pods and containers caught in the middle of their create ("creating") are undone. The
  record of a creating pod holds none of the side effects made after it (namespaces,
  network, infra process), so those are found at their fixed places instead.
- A ready pod whose infra process is gone, or whose network namespace is no longer
  pinned, was being stopped: the stop is completed.
- Bundles, pod dirs, exit files and snapshots that no record names (a crash between a
  side effect and its record) are cleaned up.

Recovery never stops the daemon from starting: a step that fails is logged and the
rest goes on (the operator can remove what is left through the CRI).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Awaitable
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling.errors import PodlingError
from podling.oslib import cgroups
from podling.oslib.mount import unmount
from podling.runtimes.conmon import wait_gone
from podling.sandbox.namespaces import PinnedNamespaces, is_namespace_file, unpin
from podling.services.container_create import release_image_volumes
from podling.services.containers import ContainerService
from podling.services.pod_run import pinned_of
from podling.services.pods import PodService
from podling.services.unpacking import drop_unfinished_extractions
from podling.store.pods import (
    CT_CREATED,
    CT_CREATING,
    CT_RUNNING,
    POD_CREATING,
    POD_READY,
    PodRecord,
)

log = logging.getLogger(__name__)


async def recover(pods: PodService, containers: ContainerService) -> None:
    store = containers.store
    for rec in store.containers():
        if rec.state == CT_CREATING:
            log.warning("removing half-created container", extra={"container": rec.id})
            await _quietly(containers.remove(rec.id))
        elif rec.state in (CT_RUNNING, CT_CREATED):
            await _quietly(_check_container(containers, rec.id))
    for pod in store.pods():
        if pod.state == POD_CREATING:
            log.warning("removing half-created pod", extra={"pod": pod.id})
            await _quietly(_undo_pod(pods, pod))
        elif pod.state == POD_READY:
            await _quietly(_check_pod(pods, pod))
    await _orphans(pods, containers)


async def _check_container(containers: ContainerService, cid: str) -> None:
    rec = containers.store.get_container(cid)
    if rec is None:
        return
    if rec.state == CT_CREATED:
        state = await containers.handler(rec).runtime.state(cid)
        if state is not None and state.get("status") in ("running", "paused"):
            log.warning("recording the start cut short by a crash", extra={"container": cid})
            rec.state, rec.started_ns = CT_RUNNING, time.time_ns()
            containers.store.update_container(rec)
    info = containers.conmon.exit_info(containers.deps.paths.exits, cid, Path(rec.bundle))
    if info is not None:
        containers.on_exit(cid, info)


async def _check_pod(pods: PodService, pod: PodRecord) -> None:
    """Complete a StopPodSandbox the crash cut short (its releases come before its record)."""
    netns = pod.namespaces.get("network")
    gone = netns is not None and not is_namespace_file(Path(netns))
    if pod.infra_id and not gone:
        state = await pods.deps.handlers.lookup(pod.runtime_handler).runtime.state(pod.infra_id)
        gone = state is None or state.get("status") == "stopped"
    if gone:
        log.warning("completing the stop cut short by a crash", extra={"pod": pod.id})
        await pods.stop(pod.id)


def _standard_pins(pod_dir: Path) -> PinnedNamespaces:
    """Every namespace file a pod may have pinned (pin_namespaces: <pod dir>/ns/<kind>)."""
    names = [f.name for f in dataclasses.fields(PinnedNamespaces)]
    return PinnedNamespaces(*(pod_dir / "ns" / name for name in names))


async def _undo_pod(pods: PodService, pod: PodRecord) -> None:
    pod_dir = Path(pod.pod_dir)
    if not pod.infra_id and pods.deps.paths.bundle(pod.id).exists():
        pod.infra_id = pod.id  # started but not recorded (an infra container has the pod's id)
    await _quietly(pods.deps.infra.remove(pod))
    netns = pod.namespaces.get("network") or str(pod_dir / "ns" / "net")
    await _quietly(pods.deps.cni.delete(pod.id, Path(netns)))  # its cache knows what ADD did
    await asyncio.to_thread(unmount, pod_dir / "shm", detach=True)
    await asyncio.to_thread(unpin, pinned_of(pod))
    await asyncio.to_thread(unpin, _standard_pins(pod_dir))
    own = not pb.PodSandboxConfig.FromString(pod.config).linux.cgroup_parent
    if own and pod.cgroup_parent:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(cgroups.remove, pod.cgroup_parent)
    shutil.rmtree(pod_dir, ignore_errors=True)
    pods.store.delete_pod(pod.id)


async def _orphans(pods: PodService, containers: ContainerService) -> None:
    paths = containers.deps.paths
    known_cts = {c.id for c in containers.store.containers()}
    known_infra = {p.infra_id for p in pods.store.pods() if p.infra_id}
    for bundle in list(paths.containers.iterdir()) if paths.containers.exists() else []:
        if bundle.name not in known_cts and bundle.name not in known_infra:
            await _quietly(_orphan_bundle(containers, bundle))
    for exit_file in list(paths.exits.iterdir()) if paths.exits.exists() else []:
        if exit_file.name not in known_cts and exit_file.name not in known_infra:
            exit_file.unlink(missing_ok=True)
    known_pods = {p.id for p in pods.store.pods()}
    for pod_dir in list(paths.pods.iterdir()) if paths.pods.exists() else []:
        if pod_dir.name not in known_pods:
            log.warning("removing orphaned pod dir", extra={"dir": str(pod_dir)})
            await asyncio.to_thread(unmount, pod_dir / "shm", detach=True)
            await _quietly(asyncio.to_thread(unpin, _standard_pins(pod_dir)))
            shutil.rmtree(pod_dir, ignore_errors=True)
    await _quietly(asyncio.to_thread(_orphan_snapshots, containers, known_cts))


async def _orphan_bundle(containers: ContainerService, bundle: Path) -> None:
    log.warning("removing orphaned bundle", extra={"bundle": str(bundle)})
    for handler in containers.deps.handlers.all():
        await _quietly(handler.runtime.delete(bundle.name, force=True))
    await wait_gone(bundle)
    await asyncio.to_thread(unmount, bundle / "rootfs", detach=True)
    snapshotter = containers.deps.snapshotter
    await asyncio.to_thread(release_image_volumes, snapshotter, bundle.name, bundle)
    if snapshotter.exists(f"ct-{bundle.name}"):
        await asyncio.to_thread(snapshotter.remove, f"ct-{bundle.name}")
    shutil.rmtree(bundle, ignore_errors=True)


def _orphan_snapshots(containers: ContainerService, known_cts: set[str]) -> None:
    """Writable layers and image-volume views of containers no record names, and layer
    extractions a crash interrupted (nothing is pulling yet)."""
    snapshotter = containers.deps.snapshotter
    for key in snapshotter.keys():  # noqa: SIM118 - a Snapshotter, not a dict
        owner = key.removeprefix("ct-") if key.startswith("ct-") else ""
        if key.startswith("iv-"):
            owner = key.split("-")[1]
        if owner and owner not in known_cts:
            log.warning("removing orphaned snapshot", extra={"snapshot": key})
            snapshotter.remove(key)
    drop_unfinished_extractions(snapshotter)


async def _quietly(aw: Awaitable[object]) -> None:
    try:
        await aw
    except (PodlingError, OSError):
        log.exception("recovery step failed; continuing")

"""RunPodSandbox, step by step, each step with its undo (see rollback.py).

1. validate, reserve the name (record in state "creating": the intent, before any side effect)
2. pin the pod's network, IPC and UTS namespaces (hostname, namespaced sysctls inside),
   and its user namespace when it asks for one (hostUsers: false)
3. at once, as they are independent: create the pod cgroup (pod-level limits when given);
   CNI ADD (not for host network), with the port mappings; mount the pod's /dev/shm
4. write hostname, resolv.conf and hosts (hosts names the pod's IPs)
5. start the infra process, only when the pod's containers share a PID namespace
6. mark the pod ready
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling.config import Config
from podling.errors import FailedPrecondition
from podling.oslib import cgroups
from podling.oslib.mount import mount, unmount
from podling.paths import Paths
from podling.runtimes import gvisor
from podling.runtimes.handlers import Handler, HandlerRegistry
from podling.sandbox.cni import CniManager, PortMapping
from podling.sandbox.files import DnsSpec, write_pod_files
from podling.sandbox.namespaces import PinnedNamespaces, check_sysctls, pin_namespaces, unpin
from podling.sandbox.userns import UserNamespace, check_searchable, pod_user_namespace
from podling.services import validate
from podling.services.events import CREATED, STARTED, Event, EventBus
from podling.services.infra import InfraRunner
from podling.services.rollback import Steps
from podling.snapshots.base import Mount
from podling.store.pods import POD_CREATING, POD_READY, PodRecord, PodStore

log = logging.getLogger(__name__)
NODE = pb.NamespaceMode.NODE
POD = pb.NamespaceMode.POD


@dataclass(frozen=True)
class PodRunDeps:
    cfg: Config
    paths: Paths
    store: PodStore
    cni: CniManager
    infra: InfraRunner
    events: EventBus
    handlers: HandlerRegistry


def reservation(md: pb.PodSandboxMetadata) -> str:
    return f"{md.name}_{md.namespace}_{md.uid}_{md.attempt}"


def ns_options(config: pb.PodSandboxConfig) -> pb.NamespaceOption:
    return config.linux.security_context.namespace_options


def pod_cgroup(cfg: Config, config: pb.PodSandboxConfig, pod_id: str) -> str:
    """The kubelet's cgroup_parent is the pod's own cgroup; without one, podling makes
    `<runtime.cgroup_parent>/<pod id>`."""
    return config.linux.cgroup_parent or f"{cfg.runtime.cgroup_parent.rstrip('/')}/{pod_id}"


async def run_pod(deps: PodRunDeps, config: pb.PodSandboxConfig, handler: str) -> str:
    validate.pod_config(config)
    runtime = deps.handlers.get(handler)  # NotFound / FailedPrecondition, before any step
    handler = runtime.name
    opts = ns_options(config)
    host_net, host_ipc = opts.network == NODE, opts.ipc == NODE
    check_sysctls(dict(config.linux.sysctls), net=not host_net, ipc=not host_ipc)
    userns = _user_namespace(deps, config, runtime)
    if runtime.own_kernel:
        gvisor.check_pod(handler, opts, runtime.own_kernel)
    mappings = validate.port_mappings(config)
    pod_id = secrets.token_hex(32)
    rec = PodRecord(
        id=pod_id,
        reservation=reservation(config.metadata),
        state=POD_CREATING,
        created_ns=time.time_ns(),
        config=config.SerializeToString(),
        runtime_handler=handler,
        pod_dir=str(deps.paths.pod_dir(pod_id)),
        cgroup_parent=pod_cgroup(deps.cfg, config, pod_id),
    )
    async with Steps("RunPodSandbox") as steps:
        async with steps.step("reserve the pod name"):
            deps.store.insert_pod(rec)
        steps.undo("forget the pod", lambda: deps.store.delete_pod(pod_id))
        pod_dir = Path(rec.pod_dir)
        pod_dir.mkdir(parents=True)
        steps.undo("remove the pod dir", lambda: shutil.rmtree(pod_dir, ignore_errors=True))
        await _namespaces(steps, rec, config, host_net, host_ipc, userns)
        # independent of one another: the cgroup and /dev/shm are made while CNI runs
        parts = [] if host_net else [_network(deps, steps, rec, config, mappings)]
        await steps.together(*parts, _cgroup(steps, rec, config), _shm(steps, rec, host_ipc))
        await _files(steps, rec, config, host_net)
        if opts.pid == POD and _shares_pid(runtime, pod_id):
            async with steps.step("start the infra process"):
                rec.infra_id, rec.infra_pid = await deps.infra.start(rec)
            steps.undo("stop the infra process", lambda: deps.infra.remove(rec))
        rec.state = POD_READY
        async with steps.step("record the pod"):
            deps.store.update_pod(rec)
        steps.commit()
    for kind in (CREATED, STARTED):
        deps.events.publish(Event(kind, pod_id, pod_id, time.time_ns()))
    log.info("pod ready", extra={"pod": pod_id, "ips": rec.ips})
    return pod_id


def _user_namespace(
    deps: PodRunDeps, config: pb.PodSandboxConfig, runtime: Handler
) -> UserNamespace | None:
    userns = pod_user_namespace(config)
    if userns is None:
        return None
    if not runtime.user_namespaces:
        supported = [h.name for h in deps.handlers.all() if h.user_namespaces and h.ready]
        raise FailedPrecondition(
            f"runtime handler {runtime.name!r} cannot run pods with a user namespace of their own "
            f"(hostUsers: false); handlers that can: {', '.join(supported) or 'none'}"
        )
    for d in (deps.paths.pods, deps.paths.containers, deps.paths.infra_rootfs):
        check_searchable(d)
    return userns


async def _namespaces(
    steps: Steps,
    rec: PodRecord,
    config: pb.PodSandboxConfig,
    host_net: bool,
    host_ipc: bool,
    userns: UserNamespace | None,
) -> None:
    pod_dir = Path(rec.pod_dir)
    async with steps.step("pin namespaces"):
        pinned = await asyncio.to_thread(
            pin_namespaces,
            pod_dir / "ns",
            net=not host_net,
            ipc=not host_ipc,
            uts=not host_net,
            hostname=config.hostname or None,
            sysctls=dict(config.linux.sysctls),
            userns=userns,
        )
    steps.undo("unpin namespaces", lambda: unpin(pinned))
    rec.namespaces = pinned.paths()


async def _network(
    deps: PodRunDeps,
    steps: Steps,
    rec: PodRecord,
    config: pb.PodSandboxConfig,
    mappings: list[PortMapping],
) -> None:
    async with steps.step("CNI ADD"):
        result = await deps.cni.add(
            rec.id,
            Path(rec.namespaces["network"]),
            pod_name=config.metadata.name,
            pod_namespace=config.metadata.namespace,
            pod_uid=config.metadata.uid,
            port_mappings=mappings,
        )
    steps.undo("CNI DEL", lambda: deps.cni.delete(rec.id, Path(rec.namespaces["network"])))
    rec.ips, rec.cni_result = list(result.ips), dict(result.raw)


async def _cgroup(steps: Steps, rec: PodRecord, config: pb.PodSandboxConfig) -> None:
    res = config.linux.resources if config.linux.HasField("resources") else None
    existed = cgroups.exists(rec.cgroup_parent)
    async with steps.step("create the pod cgroup"):
        await asyncio.to_thread(
            cgroups.create,
            rec.cgroup_parent,
            cpu_shares=res.cpu_shares if res else 0,
            cpu_quota=res.cpu_quota if res else 0,
            cpu_period=res.cpu_period if res else 0,
            memory_limit=res.memory_limit_in_bytes if res else 0,
        )
    if not existed:
        steps.undo("remove the pod cgroup", lambda: cgroups.remove(rec.cgroup_parent))


async def _files(steps: Steps, rec: PodRecord, config: pb.PodSandboxConfig, host_net: bool) -> None:
    pod_dir = Path(rec.pod_dir)
    dns = config.dns_config if config.HasField("dns_config") else None
    async with steps.step("write hostname, resolv.conf and hosts"):
        write_pod_files(
            pod_dir,
            hostname=config.hostname or config.metadata.name,
            dns=DnsSpec(tuple(dns.servers), tuple(dns.searches), tuple(dns.options))
            if dns is not None
            else None,
            host_network=host_net,
            pod_ips=rec.ips,
        )


async def _shm(steps: Steps, rec: PodRecord, host_ipc: bool) -> None:
    if host_ipc:
        rec.shm_path = "/dev/shm"
        return
    shm = Path(rec.pod_dir) / "shm"
    async with steps.step("mount the pod's /dev/shm"):
        shm.mkdir()
        await asyncio.to_thread(_mount_shm, shm)
    steps.undo("unmount /dev/shm", lambda: unmount(shm, detach=True))
    rec.shm_path = str(shm)


def _mount_shm(target: Path) -> None:
    mount(Mount("tmpfs", "shm", ("nosuid", "nodev", "noexec", "mode=1777", "size=65536k")), target)


def _shares_pid(runtime: Handler, pod_id: str) -> bool:
    if runtime.per_container_sandbox:
        log.warning(
            "handler %s runs each container in its own sandbox: pod %s's containers get "
            "PID namespaces of their own, not a shared one",
            runtime.name,
            pod_id,
        )
        return False
    return True


def pinned_of(rec: PodRecord) -> PinnedNamespaces:
    ns = rec.namespaces
    return PinnedNamespaces(
        net=Path(ns["network"]) if "network" in ns else None,
        ipc=Path(ns["ipc"]) if "ipc" in ns else None,
        uts=Path(ns["uts"]) if "uts" in ns else None,
        user=Path(ns["user"]) if "user" in ns else None,
    )

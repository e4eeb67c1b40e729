"""CreateContainer, step by step, each with its undo (see rollback.py).

1. validate; the pod must exist and be ready; the image must be present
2. reserve the name in the pod (record in state "creating")
3. a writable snapshot on the image's layers, mounted as the bundle's rootfs; for each
   image volume (a CRI mount with `image`), a read-only view of that image's layers
   (snapshot "iv-<id>-<mount index>") mounted at bundle/imagevols/<mount index>
4. config.json from the CRI config, the image config and the pod (runtimes/spec.py)
5. conmon runs `runtime create`; the container waits in "created" for StartContainer
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb
from google.protobuf.json_format import MessageToDict

from podling.errors import FailedPrecondition, InvalidArgument, NotFound, PodlingError
from podling.oslib.mount import mount, unmount
from podling.paths import Paths
from podling.runtimes.conmon import Conmon
from podling.runtimes.handlers import Handler, HandlerRegistry
from podling.runtimes.oci import OciRuntime
from podling.runtimes.spec import HostInfo, PodContext, build_spec
from podling.runtimes.spec_mounts import is_image_volume
from podling.sandbox.userns import pod_user_namespace
from podling.services import validate
from podling.services.events import CREATED, Event, EventBus
from podling.services.idmapped import mount_idmapped
from podling.services.records import find_image
from podling.services.rollback import Steps
from podling.snapshots.base import Mount, Snapshotter
from podling.store.metadata import ImageRecord, MetadataStore
from podling.store.pods import CT_CREATED, CT_CREATING, ContainerRecord, PodRecord, PodStore

TARGET = pb.NamespaceMode.TARGET
# the step whose failure is the OCI runtime's (or conmon's), counted as a runtime failure
RUNTIME_CREATE_STEP = "create the container ({handler} under conmon)"


def is_runtime_failure(err: PodlingError) -> bool:
    """Whether a CreateContainer error came from conmon/the runtime, not from the request."""
    return err.step is not None and err.step.endswith(" under conmon)")


@dataclass(frozen=True)
class CreateDeps:
    paths: Paths
    store: PodStore
    meta: MetadataStore
    snapshotter: Snapshotter
    conmon: Conmon
    events: EventBus
    host: HostInfo
    handlers: HandlerRegistry


def pod_context(pod: PodRecord) -> PodContext:
    pod_dir = Path(pod.pod_dir)
    return PodContext(
        sandbox_id=pod.id,
        config=pb.PodSandboxConfig.FromString(pod.config),
        namespaces=dict(pod.namespaces),
        infra_pid=pod.infra_pid or None,
        hostname_file=pod_dir / "hostname",
        resolv_conf=pod_dir / "resolv.conf",
        hosts_file=pod_dir / "hosts",
        shm_path=Path(pod.shm_path) if pod.shm_path else None,
        cgroup_parent=pod.cgroup_parent,
    )


def ready_pod(store: PodStore, pod_id: str) -> PodRecord:
    pod = store.get_pod(validate.require(pod_id, "pod_sandbox_id"))
    if pod is None:
        raise NotFound(f"pod sandbox {pod_id} not found")
    if pod.state != "ready":
        raise FailedPrecondition(f"pod sandbox {pod_id} is not ready (state {pod.state})")
    return pod


def log_path(pod: PodRecord, config: pb.ContainerConfig, bundle: Path) -> Path:
    """log_directory/log_path as the kubelet asks, else a file in the bundle."""
    log_dir = pb.PodSandboxConfig.FromString(pod.config).log_directory
    if log_dir and config.log_path:
        return Path(log_dir) / config.log_path
    return bundle / "ctr.log"


def _pid_mode(config: pb.ContainerConfig, pod: PodRecord) -> pb.ContainerConfig:
    """A container asking for the pod's PID namespace in a pod that shares none (no infra
    process: the pod chose CONTAINER) gets its own, as the pod-level choice wins. POD is
    the proto default, so a bare container config asks for it without meaning to."""
    opts = config.linux.security_context.namespace_options
    if pod.infra_pid or opts.pid != pb.NamespaceMode.POD:
        return config
    fixed = pb.ContainerConfig()
    fixed.CopyFrom(config)
    fixed.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    return fixed


def volume_images(meta: MetadataStore, config: pb.ContainerConfig) -> dict[int, ImageRecord]:
    """The image of each image volume, by mount index; NotFound names a missing one."""
    out: dict[int, ImageRecord] = {}
    for i, m in enumerate(config.mounts):
        if not is_image_volume(m):
            continue
        image = find_image(meta, m.image.image)
        if image is None:
            raise NotFound(
                f"image {m.image.image} for mount {m.container_path} not found: pull it first"
            )
        if not image.chain_ids:
            raise FailedPrecondition(
                f"image {m.image.image} for mount {m.container_path} has no layers to mount"
            )
        out[i] = image
    return out


async def create_container(deps: CreateDeps, pod_id: str, config: pb.ContainerConfig) -> str:
    validate.container_config(config)
    pod = ready_pod(deps.store, pod_id)
    config = _pid_mode(config, pod)
    image = find_image(deps.meta, config.image.image)
    if image is None:
        raise NotFound(f"image {config.image.image!r} not found: pull it first")
    vol_images = volume_images(deps.meta, config)
    cid = secrets.token_hex(32)
    bundle = deps.paths.bundle(cid)
    rec = ContainerRecord(
        id=cid,
        pod_id=pod.id,
        reservation=f"{config.metadata.name}_{config.metadata.attempt}",
        state=CT_CREATING,
        created_ns=time.time_ns(),
        config=config.SerializeToString(),
        image=config.image.image,
        image_id=image.id,
        bundle=str(bundle),
        snapshot=f"ct-{cid}",
        rootfs=str(bundle / "rootfs"),
        log_path=str(log_path(pod, config, bundle)),
        runtime_handler=pod.runtime_handler,
    )
    handler = deps.handlers.get(pod.runtime_handler)
    _check_handler_features(handler, config)
    async with Steps("CreateContainer") as steps:
        async with steps.step("reserve the container name"):
            deps.store.insert_container(rec)
        steps.undo("forget the container", lambda: deps.store.delete_container(cid))
        bundle.mkdir(parents=True)
        steps.undo("remove the bundle", lambda: shutil.rmtree(bundle, ignore_errors=True))
        await _rootfs(deps, steps, rec, image, pod)
        volumes = await _image_volumes(deps, steps, rec, pod, config, vol_images)
        async with steps.step("build the OCI spec"):
            result = build_spec(
                container_id=cid,
                config=config,
                pod=pod_context(pod),
                image_config=json.loads(image.config),
                rootfs=Path(rec.rootfs),
                target_pid=_target_pid(deps.store, pod, config),
                host=deps.host,
                image_volumes=volumes,
            )
            handler.adapt_spec(result.spec, config, pod_context(pod).config)
            (bundle / "config.json").write_text(json.dumps(result.spec))
        rec.stop_signal = result.stop_signal
        rec.mounts = [MessageToDict(m, preserving_proto_field_name=True) for m in result.mounts]
        Path(rec.log_path).parent.mkdir(parents=True, exist_ok=True)
        async with steps.step(RUNTIME_CREATE_STEP.format(handler=handler.name)):
            created = await handler.conmon.create(
                cid=cid,
                name=config.metadata.name,
                bundle=bundle,
                log_path=Path(rec.log_path),
                exit_dir=deps.paths.exits,
                socket_dir=deps.paths.attach_sockets,
                terminal=config.tty,
                stdin=config.stdin,
                stdin_once=config.stdin_once,
            )
        steps.undo("delete the container", lambda: _delete(deps, handler.runtime, cid))
        rec.pid, rec.state = created.pid, CT_CREATED
        async with steps.step("record the container"):
            deps.store.update_container(rec)
        steps.commit()
    deps.events.publish(Event(CREATED, cid, pod.id, time.time_ns()))
    return cid


async def _rootfs(
    deps: CreateDeps, steps: Steps, rec: ContainerRecord, image: ImageRecord, pod: PodRecord
) -> None:
    parent = image.chain_ids[-1] if image.chain_ids else None
    rootfs = Path(rec.rootfs)
    async with steps.step("prepare the writable layer"):
        await asyncio.to_thread(deps.snapshotter.prepare, rec.snapshot, parent)
    steps.undo("remove the writable layer", lambda: deps.snapshotter.remove(rec.snapshot))
    async with steps.step("mount the root filesystem"):
        rootfs.mkdir()
        await _mount_all(deps, pod, deps.snapshotter.mounts(rec.snapshot), rootfs, "rootfs")
    steps.undo("unmount the root filesystem", lambda: unmount(rootfs, detach=True))


async def _mount_all(
    deps: CreateDeps, pod: PodRecord, mounts: list[Mount], target: Path, scratch: str
) -> None:
    """Mount snapshot `mounts` on `target`; id-mapped for a pod with a user namespace
    (`scratch`: a name for the temporary dir of layer binds, beside `target`)."""
    userns = pod_user_namespace(pb.PodSandboxConfig.FromString(pod.config))
    if userns is None:
        for m in mounts:
            await asyncio.to_thread(mount, m, target)
        return
    if deps.snapshotter.name != "overlayfs":
        raise FailedPrecondition(
            f"pod {pod.id} has a user namespace of its own, whose containers need the "
            f"overlayfs snapshotter (id-mapped layers); this node uses {deps.snapshotter.name}"
        )
    userns_file = Path(pod.namespaces["user"])
    scratch_dir = target.parent / f".idmap-{scratch}"
    await asyncio.to_thread(mount_idmapped, mounts, target, userns_file, scratch_dir, userns.root())


async def _image_volumes(
    deps: CreateDeps,
    steps: Steps,
    rec: ContainerRecord,
    pod: PodRecord,
    config: pb.ContainerConfig,
    images: dict[int, ImageRecord],
) -> dict[int, str]:
    """Mount a read-only view of each image volume's image under the bundle; returns the
    dir to bind into the container, by mount index (image_sub_path resolved)."""
    out: dict[int, str] = {}
    for i, image in images.items():
        key, target = image_volume_key(rec.id, i), image_volume_dir(Path(rec.bundle), i)
        async with steps.step(f"prepare the image volume for mounts[{i}]"):
            views = await asyncio.to_thread(deps.snapshotter.view, key, image.chain_ids[-1])
        steps.undo(f"remove image volume {key}", partial(deps.snapshotter.remove, key))
        async with steps.step(f"mount the image volume for mounts[{i}]"):
            target.mkdir(parents=True)
            await _mount_all(deps, pod, views, target, str(i))
        steps.undo(f"unmount {target}", partial(unmount, target, detach=True))
        out[i] = sub_path(target, config.mounts[i], i)
    return out


def _check_handler_features(handler: Handler, config: pb.ContainerConfig) -> None:
    for i, m in enumerate(config.mounts):
        if m.recursive_read_only and not handler.recursive_read_only_mounts:
            raise FailedPrecondition(
                f"mounts[{i}] ({m.container_path}): runtime handler {handler.name!r} cannot "
                "make recursive read-only mounts; use runc or crun, or drop recursive_read_only"
            )


def image_volume_key(cid: str, index: int) -> str:
    """The view snapshot of image volume mounts[index] of container `cid`."""
    return f"iv-{cid}-{index}"


def image_volume_dir(bundle: Path, index: int) -> Path:
    return bundle / "imagevols" / str(index)


def sub_path(root: Path, m: pb.Mount, index: int) -> str:
    """`root`, or its image_sub_path: relative, existing, and (symlinks followed) still
    inside `root`, since an image's absolute symlinks would point into the host."""
    sub = m.image_sub_path
    if not sub:
        return str(root)
    where = f"mounts[{index}].image_sub_path {sub!r}"
    if os.path.isabs(sub):
        raise InvalidArgument(f"{where} must be relative to the image's root")
    real = os.path.realpath(root / sub)
    if os.path.commonpath([real, str(root)]) != str(root):
        raise InvalidArgument(f"{where} leaves the image {m.image.image}")
    if not os.path.exists(real):
        raise InvalidArgument(f"{where} does not exist in the image {m.image.image}")
    return real


def release_image_volumes(snapshotter: Snapshotter, cid: str, bundle: Path) -> None:
    """Unmount and remove every image volume of container `cid` (what is left of them)."""
    vols = bundle / "imagevols"
    for target in sorted(vols.iterdir()) if vols.is_dir() else []:
        unmount(target, detach=True)
    for key in snapshotter.keys():  # noqa: SIM118 - a Snapshotter, not a dict
        if key.startswith(f"iv-{cid}-"):
            snapshotter.remove(key)


async def _delete(deps: CreateDeps, runtime: OciRuntime, cid: str) -> None:
    await runtime.kill(cid, 9, all_processes=True)
    await runtime.wait_stopped(cid, 10)
    await runtime.delete(cid, force=True)
    (deps.paths.exits / cid).unlink(missing_ok=True)


def _target_pid(store: PodStore, pod: PodRecord, config: pb.ContainerConfig) -> int | None:
    opts = config.linux.security_context.namespace_options
    if opts.pid != TARGET:
        return None
    target = store.get_container(opts.target_id)
    if target is None or target.pod_id != pod.id or not target.pid:
        raise NotFound(
            f"target container {opts.target_id!r} for the PID namespace is not a running "
            f"container of pod {pod.id}"
        )
    return target.pid


def spec_of(rec: ContainerRecord) -> dict[str, Any]:
    try:
        return dict(json.loads((Path(rec.bundle) / "config.json").read_text()))
    except (OSError, ValueError):
        return {}

"""An in-process fake CRI runtime for client tests: canned pods, containers, images and
stats in memory, every request recorded. Only the RPCs the `podling` client uses.

    with FakeCRI(tmp_path / "cri.sock") as cri:
        pod = cri.add_pod("web")
        ct = cri.add_container(pod, "nginx", state=pb.CONTAINER_RUNNING)
        ... run the client against cri.endpoint ...
        assert cri.requests("StopContainer")[0].container_id == ct
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc
from google.protobuf.message import Message

ExecHandler = Callable[[pb.ExecSyncRequest], pb.ExecSyncResponse]


@dataclass
class FakePod:
    id: str
    config: pb.PodSandboxConfig
    handler: str = ""
    state: int = pb.SANDBOX_READY
    created_at: int = field(default_factory=time.time_ns)


@dataclass
class FakeContainer:
    id: str
    pod_id: str
    config: pb.ContainerConfig
    state: int = pb.CONTAINER_CREATED
    created_at: int = field(default_factory=time.time_ns)
    log_path: str = ""
    cpu_ns: int = 0  # usage_core_nano_seconds; grows by cpu_step per stats call
    cpu_step: int = 0
    nano_cores: int | None = None  # usage_nano_cores, when the runtime gives a rate
    memory: int = 0


def make_id(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


class FakeCRI(pb_grpc.RuntimeServiceServicer, pb_grpc.ImageServiceServicer):  # type: ignore[misc]
    """The fake runtime, served on a unix socket at `socket` while entered."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.pods: dict[str, FakePod] = {}
        self.containers: dict[str, FakeContainer] = {}
        self.images: set[str] = set()
        self.calls: list[tuple[str, Message]] = []
        self.exec_handler: ExecHandler = lambda req: pb.ExecSyncResponse(stdout=b"", exit_code=0)
        self.fail_next: dict[str, tuple[grpc.StatusCode, str]] = {}
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._seq = 0

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    # ---- test side ------------------------------------------------------------------

    def add_pod(self, name: str, namespace: str = "default", **labels: str) -> str:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=name),
            labels=labels,
        )
        return self._new_pod(config, "")

    def add_container(
        self, pod_id: str, name: str, state: int = pb.CONTAINER_RUNNING, **kw: Any
    ) -> str:
        labels = kw.pop("labels", {})
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=kw.pop("image", "docker.io/library/busybox:latest")),
            labels=labels,
        )
        cid = self._new_container(pod_id, config)
        ct = self.containers[cid]
        ct.state = state
        for key, value in kw.items():
            setattr(ct, key, value)
        return cid

    def requests(self, method: str) -> list[Any]:
        with self._lock:
            return [req for name, req in self.calls if name == method]

    def methods(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.calls]

    # ---- server lifecycle -----------------------------------------------------------

    def __enter__(self) -> FakeCRI:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RuntimeServiceServicer_to_server(self, server)
        pb_grpc.add_ImageServiceServicer_to_server(self, server)
        server.add_insecure_port(self.endpoint)
        server.start()
        self._server = server
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    # ---- internals ------------------------------------------------------------------

    def _record(self, method: str, request: Message, context: Any) -> None:
        with self._lock:
            self.calls.append((method, request))
            failure = self.fail_next.pop(method, None)
        if failure is not None:
            context.abort(*failure)

    def _new_pod(self, config: pb.PodSandboxConfig, handler: str) -> str:
        self._seq += 1
        pid = make_id(f"pod-{config.metadata.name}-{self._seq}")
        self.pods[pid] = FakePod(pid, config, handler, created_at=time.time_ns() + self._seq)
        return pid

    def _new_container(self, pod_id: str, config: pb.ContainerConfig) -> str:
        self._seq += 1
        cid = make_id(f"ct-{config.metadata.name}-{self._seq}")
        self.containers[cid] = FakeContainer(
            cid, pod_id, config, created_at=time.time_ns() + self._seq
        )
        return cid

    def _pod(self, ref: str, context: Any) -> FakePod:
        matches = [p for pid, p in self.pods.items() if pid.startswith(ref)] if ref else []
        if len(matches) != 1:
            context.abort(grpc.StatusCode.NOT_FOUND, f"pod sandbox {ref} not found")
        return matches[0]

    def _container(self, ref: str, context: Any) -> FakeContainer:
        found = [c for cid, c in self.containers.items() if cid.startswith(ref)] if ref else []
        if len(found) != 1:
            context.abort(grpc.StatusCode.NOT_FOUND, f"container {ref} not found")
        return found[0]

    # ---- ImageService ---------------------------------------------------------------

    def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> Any:
        self._record("ImageStatus", request, context)
        if request.image.image not in self.images:
            return pb.ImageStatusResponse()
        return pb.ImageStatusResponse(image=pb.Image(id="sha256:" + make_id(request.image.image)))

    def PullImage(self, request: pb.PullImageRequest, context: Any) -> Any:
        self._record("PullImage", request, context)
        self.images.add(request.image.image)
        return pb.PullImageResponse(image_ref="sha256:" + make_id(request.image.image))

    # ---- pods -----------------------------------------------------------------------

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Any) -> Any:
        self._record("RunPodSandbox", request, context)
        pid = self._new_pod(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pid)

    def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Any) -> Any:
        self._record("StopPodSandbox", request, context)
        pod = self._pod(request.pod_sandbox_id, context)
        pod.state = pb.SANDBOX_NOTREADY
        for ct in self.containers.values():
            if ct.pod_id == pod.id and ct.state == pb.CONTAINER_RUNNING:
                ct.state = pb.CONTAINER_EXITED
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest, context: Any) -> Any:
        self._record("RemovePodSandbox", request, context)
        pod = self._pod(request.pod_sandbox_id, context)
        del self.pods[pod.id]
        self.containers = {k: c for k, c in self.containers.items() if c.pod_id != pod.id}
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: Any) -> Any:
        self._record("PodSandboxStatus", request, context)
        pod = self._pod(request.pod_sandbox_id, context)
        info = (
            {"info": json.dumps({"pid": 42, "runtimeHandler": pod.handler})}
            if request.verbose
            else {}
        )
        return pb.PodSandboxStatusResponse(status=self._pod_status(pod), info=info)

    def _pod_status(self, pod: FakePod) -> pb.PodSandboxStatus:
        return pb.PodSandboxStatus(
            id=pod.id,
            metadata=pod.config.metadata,
            state=pod.state,
            created_at=pod.created_at,
            labels=pod.config.labels,
            runtime_handler=pod.handler,
        )

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Any) -> Any:
        self._record("ListPodSandbox", request, context)
        flt = request.filter
        items = []
        for pod in self.pods.values():
            if flt.id and not pod.id.startswith(flt.id):
                continue
            if flt.HasField("state") and pod.state != flt.state.state:
                continue
            if any(pod.config.labels.get(k) != v for k, v in flt.label_selector.items()):
                continue
            items.append(
                pb.PodSandbox(
                    id=pod.id,
                    metadata=pod.config.metadata,
                    state=pod.state,
                    created_at=pod.created_at,
                    labels=pod.config.labels,
                    runtime_handler=pod.handler,
                )
            )
        return pb.ListPodSandboxResponse(items=items)

    # ---- containers -----------------------------------------------------------------

    def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> Any:
        self._record("CreateContainer", request, context)
        pod = self._pod(request.pod_sandbox_id, context)
        return pb.CreateContainerResponse(container_id=self._new_container(pod.id, request.config))

    def StartContainer(self, request: pb.StartContainerRequest, context: Any) -> Any:
        self._record("StartContainer", request, context)
        self._container(request.container_id, context).state = pb.CONTAINER_RUNNING
        return pb.StartContainerResponse()

    def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> Any:
        self._record("StopContainer", request, context)
        self._container(request.container_id, context).state = pb.CONTAINER_EXITED
        return pb.StopContainerResponse()

    def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any) -> Any:
        self._record("RemoveContainer", request, context)
        del self.containers[self._container(request.container_id, context).id]
        return pb.RemoveContainerResponse()

    def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Any) -> Any:
        self._record("ContainerStatus", request, context)
        ct = self._container(request.container_id, context)
        status = pb.ContainerStatus(
            id=ct.id,
            metadata=ct.config.metadata,
            state=ct.state,
            created_at=ct.created_at,
            image=ct.config.image,
            labels=ct.config.labels,
            log_path=ct.log_path,
        )
        info = {"info": json.dumps({"pid": 7, "sandboxID": ct.pod_id})} if request.verbose else {}
        return pb.ContainerStatusResponse(status=status, info=info)

    def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> Any:
        self._record("ListContainers", request, context)
        flt = request.filter
        out = []
        for ct in self.containers.values():
            if flt.id and not ct.id.startswith(flt.id):
                continue
            if flt.pod_sandbox_id and not ct.pod_id.startswith(flt.pod_sandbox_id):
                continue
            if flt.HasField("state") and ct.state != flt.state.state:
                continue
            if any(ct.config.labels.get(k) != v for k, v in flt.label_selector.items()):
                continue
            out.append(self._summary(ct))
        return pb.ListContainersResponse(containers=out)

    def _summary(self, ct: FakeContainer) -> pb.Container:
        return pb.Container(
            id=ct.id,
            pod_sandbox_id=ct.pod_id,
            metadata=ct.config.metadata,
            image=ct.config.image,
            image_ref="sha256:" + make_id(ct.config.image.image),
            state=ct.state,
            created_at=ct.created_at,
            labels=ct.config.labels,
        )

    def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Any
    ) -> Any:
        self._record("UpdateContainerResources", request, context)
        self._container(request.container_id, context)
        return pb.UpdateContainerResourcesResponse()

    def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> Any:
        self._record("ExecSync", request, context)
        ct = self._container(request.container_id, context)
        if ct.state != pb.CONTAINER_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"container {ct.id} is not running")
        return self.exec_handler(request)

    # ---- stats ----------------------------------------------------------------------

    def _stats(self, ct: FakeContainer) -> pb.ContainerStats:
        ct.cpu_ns += ct.cpu_step
        cpu = pb.CpuUsage(
            timestamp=time.time_ns(), usage_core_nano_seconds=pb.UInt64Value(value=ct.cpu_ns)
        )
        if ct.nano_cores is not None:
            cpu.usage_nano_cores.value = ct.nano_cores
        return pb.ContainerStats(
            attributes=pb.ContainerAttributes(
                id=ct.id, metadata=ct.config.metadata, labels=ct.config.labels
            ),
            cpu=cpu,
            memory=pb.MemoryUsage(working_set_bytes=pb.UInt64Value(value=ct.memory)),
            writable_layer=pb.FilesystemUsage(
                used_bytes=pb.UInt64Value(value=4096), inodes_used=pb.UInt64Value(value=3)
            ),
        )

    def ListContainerStats(self, request: pb.ListContainerStatsRequest, context: Any) -> Any:
        self._record("ListContainerStats", request, context)
        flt = request.filter
        out = [
            self._stats(ct)
            for ct in self.containers.values()
            if (not flt.id or ct.id.startswith(flt.id))
            and (not flt.pod_sandbox_id or ct.pod_id.startswith(flt.pod_sandbox_id))
            and all(ct.config.labels.get(k) == v for k, v in flt.label_selector.items())
        ]
        return pb.ListContainerStatsResponse(stats=out)

    def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest, context: Any) -> Any:
        self._record("ListPodSandboxStats", request, context)
        flt = request.filter
        out = []
        for pod in self.pods.values():
            if flt.id and not pod.id.startswith(flt.id):
                continue
            cts = [self._stats(c) for c in self.containers.values() if c.pod_id == pod.id]
            cpu = pb.CpuUsage(
                timestamp=time.time_ns(),
                usage_core_nano_seconds=pb.UInt64Value(
                    value=sum(c.cpu.usage_core_nano_seconds.value for c in cts)
                ),
            )
            mem = sum(c.memory.working_set_bytes.value for c in cts)
            linux = pb.LinuxPodSandboxStats(
                cpu=cpu,
                memory=pb.MemoryUsage(working_set_bytes=pb.UInt64Value(value=mem)),
                containers=cts,
            )
            attrs = pb.PodSandboxAttributes(id=pod.id, metadata=pod.config.metadata)
            out.append(pb.PodSandboxStats(attributes=attrs, linux=linux))
        return pb.ListPodSandboxStatsResponse(stats=out)


def invoke(cri: FakeCRI, *args: str) -> Any:
    """Run `podling ARGS` in-process against `cri`; a click Result (stdout, stderr and
    exit_code separate). Uncaught exceptions propagate, so a traceback fails the test."""
    from click.testing import CliRunner

    from podling.cli.client import main

    runner = CliRunner()
    result = runner.invoke(
        main, ["--runtime-endpoint", cri.endpoint, "-t", "10", *args], catch_exceptions=False
    )
    return result

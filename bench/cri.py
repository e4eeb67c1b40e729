"""One CRI client for both runtimes, so both pay the same client cost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from bench.images import BUSYBOX
from podling.runtimes.spec_security import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS

T = TypeVar("T")
TIMEOUT = 300.0
# What the kubelet sends for a pod without shareProcessNamespace: the pod's network and
# IPC, a PID namespace per container (the CRI default, 0 = POD, would share PIDs).
KUBELET_NS = pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """The call's result and its wall time in milliseconds."""
    t0 = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - t0) * 1000


@dataclass
class Started:
    """A pod with one running container, and what each step cost (ms)."""

    pod_id: str
    container_id: str
    run_ms: float
    create_ms: float
    start_ms: float

    @property
    def total_ms(self) -> float:
        return self.run_ms + self.create_ms + self.start_ms


class Client:
    def __init__(self, socket: Path, log_dir: Path, cgroup_root: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)
        self.log_dir = log_dir
        self.cgroup_root = cgroup_root

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until Status answers with RuntimeReady and NetworkReady both true."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.runtime.Status(pb.StatusRequest(), timeout=5).status
                if all(c.status for c in status.conditions if c.type.endswith("Ready")):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"runtime at {self.channel} never became ready")
            time.sleep(0.2)

    def pull(self, ref: str) -> None:
        self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=TIMEOUT)

    def remove_image(self, ref: str) -> None:
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))

    def pod_config(self) -> pb.PodSandboxConfig:
        """A kubelet-like pod: its own log dir and a cgroup parent under the bench's root."""
        name = f"b{uuid.uuid4().hex[:10]}"
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="bench"),
            hostname=name,
            log_directory=str(self.log_dir / name),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/{self.cgroup_root}/pod{name}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=KUBELET_NS),
            ),
        )

    def start_pod(self) -> Started:
        """RunPodSandbox + CreateContainer + StartContainer of busybox `sleep`, timed."""
        pod = self.pod_config()
        r = self.runtime
        run, run_ms = timed(
            lambda: r.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=TIMEOUT)
        )
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="sleep"),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sleep", "86400"],
            log_path="sleep.log",
            linux=pb.LinuxContainerConfig(
                # the kubelet's default masked and read-only paths (procMount Default):
                # without them podling would apply these defaults and containerd none
                security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=KUBELET_NS,
                    masked_paths=DEFAULT_MASKED_PATHS,
                    readonly_paths=DEFAULT_READONLY_PATHS,
                )
            ),
        )
        req = pb.CreateContainerRequest(
            pod_sandbox_id=run.pod_sandbox_id, config=cfg, sandbox_config=pod
        )
        created, create_ms = timed(lambda: r.CreateContainer(req, timeout=TIMEOUT))
        cid = created.container_id
        start = pb.StartContainerRequest(container_id=cid)
        _, start_ms = timed(lambda: r.StartContainer(start, timeout=TIMEOUT))
        return Started(run.pod_sandbox_id, cid, run_ms, create_ms, start_ms)

    def remove_pod(self, started: Started) -> float:
        """StopContainer (no grace) + StopPodSandbox + RemovePodSandbox, as the kubelet
        does; returns the wall time in ms."""
        r = self.runtime
        t0 = time.perf_counter()
        r.StopContainer(pb.StopContainerRequest(container_id=started.container_id, timeout=0))
        r.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=started.pod_id))
        r.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=started.pod_id))
        return (time.perf_counter() - t0) * 1000

    def remove_all_pods(self) -> None:
        """Every container stopped without grace, then every pod stopped and removed."""
        for c in self.runtime.ListContainers(pb.ListContainersRequest()).containers:
            if c.state == pb.CONTAINER_RUNNING:
                req = pb.StopContainerRequest(container_id=c.id, timeout=0)
                self.runtime.StopContainer(req, timeout=TIMEOUT)
        for pod in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id))
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id))

    def running(self, container_id: str) -> bool:
        req = pb.ContainerStatusRequest(container_id=container_id)
        state = self.runtime.ContainerStatus(req).status.state
        return bool(state == pb.CONTAINER_RUNNING)

"""The parts of the crash-consistency harness: the workload, what the kubelet was told
(the ledger) and the checks of CRI-visible state after a restart (crash_footprint.py
has the machine-level ones).

The workload drives one fixed sequence through the CRI API (pull, run pod, create, start,
exec, stop, remove container, stop pod, remove pod, remove image). The ledger holds every
object whose create RPC returned OK and whose remove RPC did not, plus the one operation
in flight when the daemon died.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb

from tests import leaks
from tests.reliability.crash_footprint import NET_PREFIX
from tests.support.daemon import Daemon
from tests.support.pods import container_config, pod_config

BRIDGE = "plcrash0"
SUBNET = "10.93.11.0/24"
REPO = "rel-crash-busybox"
PASSED = "crash point passed: "
REACHED = "crash point reached, killing the daemon: "

READY, NOTREADY = pb.PodSandboxState.SANDBOX_READY, pb.PodSandboxState.SANDBOX_NOTREADY
CREATED, RUNNING, EXITED = (
    pb.ContainerState.CONTAINER_CREATED,
    pb.ContainerState.CONTAINER_RUNNING,
    pb.ContainerState.CONTAINER_EXITED,
)


class DaemonDied(Exception):
    """The daemon went away during an RPC (the crash point fired)."""


@dataclass
class Ledger:
    image: str
    pod_name: str
    has_image: bool = False
    pods: dict[str, int] = field(default_factory=dict)  # id → expected pod state
    containers: dict[str, int] = field(default_factory=dict)  # id → expected state
    interrupted: str = ""  # the workload step in flight when the daemon died


class Workload:
    """The fixed sequence of CRI calls; each call updates the ledger only once it is OK."""

    def __init__(self, d: Daemon, image: str, name: str, logs: Path) -> None:
        self.d = d
        self.pod = pod_config(f"wl-{name}", log_dir=logs)
        self.ledger = Ledger(image, self.pod.metadata.name)
        self.ctr = container_config("wl", "sleep", "3600")
        self.ctr.image.image = image
        self.pod_id = self.cid = ""

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("pull", self.pull),
            ("run pod", self.run_pod),
            ("create container", self.create),
            ("start container", self.start),
            ("exec", self.exec),
            ("stop container", self.stop),
            ("remove container", self.remove),
            ("stop pod", self.stop_pod),
            ("remove pod", self.remove_pod),
            ("remove image", self.remove_image),
        ]

    def run(self) -> str:
        """Run the sequence; returns the step in flight when the daemon died ("" if none)."""
        for name, fn in self.steps():
            self.ledger.interrupted = name
            try:
                fn()
            except grpc.RpcError:
                if self._died():
                    return name
                raise
        self.ledger.interrupted = ""
        return ""

    def _died(self, timeout: float = 10) -> bool:
        assert self.d.proc is not None
        try:
            self.d.proc.wait(timeout)
        except Exception:
            return False
        return True

    def pull(self) -> None:
        self.d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=self.ledger.image)))
        self.ledger.has_image = True

    def run_pod(self) -> None:
        req = pb.RunPodSandboxRequest(config=self.pod)
        self.pod_id = self.d.runtime.RunPodSandbox(req).pod_sandbox_id
        self.ledger.pods[self.pod_id] = READY

    def create(self) -> None:
        req = pb.CreateContainerRequest(
            pod_sandbox_id=self.pod_id, config=self.ctr, sandbox_config=self.pod
        )
        self.cid = self.d.runtime.CreateContainer(req).container_id
        self.ledger.containers[self.cid] = CREATED

    def start(self) -> None:
        self.d.runtime.StartContainer(pb.StartContainerRequest(container_id=self.cid))
        self.ledger.containers[self.cid] = RUNNING

    def exec(self) -> None:
        req = pb.ExecSyncRequest(container_id=self.cid, cmd=["true"], timeout=10)
        assert self.d.runtime.ExecSync(req).exit_code == 0

    def stop(self) -> None:
        self.d.runtime.StopContainer(pb.StopContainerRequest(container_id=self.cid, timeout=2))
        self.ledger.containers[self.cid] = EXITED

    def remove(self) -> None:
        self.d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=self.cid))
        del self.ledger.containers[self.cid]

    def stop_pod(self) -> None:
        self.d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=self.pod_id))
        self.ledger.pods[self.pod_id] = NOTREADY

    def remove_pod(self) -> None:
        self.d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=self.pod_id))
        del self.ledger.pods[self.pod_id]

    def remove_image(self) -> None:
        self.d.images.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=self.ledger.image))
        )
        self.ledger.has_image = False


# ---- checks after a restart -----------------------------------------------------------


def alive(d: Daemon, cid: str) -> bool:
    """The container's process really runs: an exec in it succeeds."""
    try:
        req = pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10)
        return d.runtime.ExecSync(req).exit_code == 0
    except grpc.RpcError:
        return False


def pod_state(d: Daemon, pod_id: str) -> pb.PodSandboxStatus | None:
    try:
        return d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def ct_state(d: Daemon, cid: str) -> pb.ContainerStatus | None:
    try:
        return d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def wait_exited(d: Daemon, cid: str, timeout: float = 5) -> pb.ContainerStatus | None:
    deadline = time.monotonic() + timeout
    while True:
        st = ct_state(d, cid)
        if st is None or st.state != RUNNING or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def not_really_ready(d: Daemon, pod_id: str) -> str:
    """Why a pod reported ready is not (its infra process or netns is gone), or ""."""
    netns = d.state / "pods" / pod_id / "ns" / "net"
    if not any(f" {netns} " in f" {m} " for m in leaks.mounts()):
        return f"pod {pod_id[:12]} is reported ready but its netns is not pinned"
    root = d.state / "runtimes" / "runc"
    out = subprocess.run(["runc", "--root", str(root), "state", pod_id], capture_output=True)
    if out.returncode != 0 or json.loads(out.stdout).get("status") != "running":
        return f"pod {pod_id[:12]} is reported ready but its infra process is not running"
    return ""


def check_sentinels(d: Daemon, sentinels: dict[str, str]) -> list[str]:
    """Every sentinel pod is ready and its container runs (reported and really)."""
    lost = []
    for pod_id, cid in sentinels.items():
        pst = pod_state(d, pod_id)
        if pst is None or pst.state != READY:
            lost.append(f"sentinel pod {pod_id[:12]}: {pst and pst.state}")
        elif why := not_really_ready(d, pod_id):
            lost.append(f"sentinel {why}")
        cst = ct_state(d, cid)
        if cst is None or cst.state != RUNNING or not alive(d, cid):
            lost.append(f"sentinel container {cid[:12]}: {cst and cst.state}, not running")
    return lost


def check_ledger(d: Daemon, led: Ledger) -> list[str]:
    """Every object the kubelet was told exists still does, in the state it was told;
    the object of an interrupted remove/stop may be in either state."""
    lost = []
    for pod_id, want in list(led.pods.items()):
        st = pod_state(d, pod_id)
        if st is None and led.interrupted == "remove pod":
            del led.pods[pod_id]
        elif st is None:
            lost.append(f"pod {pod_id[:12]} ({led.interrupted}) is gone")
        elif st.state != want and led.interrupted not in ("stop pod", "remove pod"):
            lost.append(f"pod {pod_id[:12]} is {st.state}, expected {want}")
        elif st.state == READY and (why := not_really_ready(d, pod_id)):
            lost.append(why)
    for cid, want in list(led.containers.items()):
        lost += _check_container(d, led, cid, want)
    if led.has_image and not _image(d, led.image) and led.interrupted != "remove image":
        lost.append(f"image {led.image} is gone")
    return lost


def _check_container(d: Daemon, led: Ledger, cid: str, want: int) -> list[str]:
    st = ct_state(d, cid)
    moving = led.interrupted in ("stop container", "remove container", "stop pod", "remove pod")
    if st is None and led.interrupted in ("remove container", "remove pod"):
        del led.containers[cid]
        return []
    if st is None:
        return [f"container {cid[:12]} ({led.interrupted}) is gone"]
    if st.state == RUNNING and not alive(d, cid):
        st = wait_exited(d, cid) if moving else st
        if st is not None and st.state == RUNNING:
            return [f"container {cid[:12]} is reported running but its process is not"]
    if st.state == want or moving:
        return []
    if want == CREATED and led.interrupted == "start container" and st.state == RUNNING:
        return []
    return [f"container {cid[:12]} is {st.state}, expected {want} ({led.interrupted})"]


def _image(d: Daemon, ref: str) -> bool:
    req = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))
    return d.images.ImageStatus(req).HasField("image")


def check_unknown(d: Daemon, leds: list[Ledger], sentinels: dict[str, str], keep: str) -> list[str]:
    """Objects nobody was told about may only be the one whose create was interrupted,
    and it must be complete: a ready pod with an IP, a created (startable) container, an
    image with its layers (the store check covers those). Adopted into its ledger."""
    bad = []
    known_pods = set(sentinels).union(*(led.pods for led in leds))
    for p in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        if p.id in known_pods:
            continue
        led = next((x for x in leds if x.pod_name == p.metadata.name), None)
        st = pod_state(d, p.id)
        ok = led is not None and led.interrupted == "run pod" and st is not None
        if not ok or not st or st.state != READY or not st.network.ip.startswith(NET_PREFIX):
            bad.append(f"unknown pod {p.id[:12]} {p.metadata.name}: {st and st.state}")
        elif why := not_really_ready(d, p.id):
            bad.append(why)
        if led is not None:
            led.pods[p.id] = READY
    known_cts = set(sentinels.values()).union(*(led.containers for led in leds))
    for c in d.runtime.ListContainers(pb.ListContainersRequest()).containers:
        if c.id in known_cts:
            continue
        led = next((x for x in leds if c.pod_sandbox_id in x.pods), None)
        if led is None or led.interrupted != "create container" or c.state != CREATED:
            bad.append(f"unknown container {c.id[:12]} in pod {c.pod_sandbox_id[:12]}: {c.state}")
        if led is not None:
            led.containers[c.id] = c.state
    for img in d.images.ListImages(pb.ListImagesRequest()).images:
        led = next((x for x in leds if x.image in img.repo_tags), None)
        if keep in img.repo_tags or (led is not None and led.has_image):
            continue
        if led is None or led.interrupted != "pull":
            bad.append(f"unknown image {img.id[:19]} {list(img.repo_tags)}")
        if led is not None:
            led.has_image = True
    return bad


def finish(d: Daemon, led: Ledger) -> list[str]:
    """What the kubelet would do next: start what was created, then remove everything the
    workload made. Every call must succeed; returns what did not."""
    bad = []
    for cid in list(led.containers):
        st = ct_state(d, cid)
        if st is not None and st.state == CREATED:
            try:
                d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
            except grpc.RpcError as e:
                bad.append(f"created container {cid[:12]} does not start: {e.details()}")
                continue
            if not alive(d, cid):
                bad.append(f"container {cid[:12]} started but does not run")
    for pod_id in list(led.pods):
        for call, req in (
            (d.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)),
            (d.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)),
        ):
            try:
                call(req)
            except grpc.RpcError as e:
                bad.append(f"pod {pod_id[:12]}: {type(req).__name__}: {e.details()}")
    led.pods.clear()
    led.containers.clear()
    try:
        d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=led.image)))
    except grpc.RpcError as e:
        bad.append(f"RemoveImage {led.image}: {e.details()}")
    led.has_image = False
    return bad

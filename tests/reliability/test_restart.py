"""A graceful restart with 50 running pods: SIGTERM podlingd, start it again on the same
root and state; every pod is still Ready, every container still Running (the same
process), attachable and exec-able. Prints the restart time (start → first successful
Status) and the time until every pod and container reads ready again."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.streaming import client
from tests.integration.pod_fixtures import PodEnv
from tests.integration.test_streaming import Sink, feed, run_exec
from tests.reliability.test_load import make_pods, teardown
from tests.support.daemon import Daemon
from tests.support.pods import container_config

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plload1", "10.93.15.0/24"
PODS = 50
RUNNING = pb.ContainerState.CONTAINER_RUNNING
READY = pb.PodSandboxState.SANDBOX_READY


def pid_of(d: Daemon, cid: str) -> int:
    req = pb.ContainerStatusRequest(container_id=cid, verbose=True)
    return int(json.loads(d.runtime.ContainerStatus(req).info["info"])["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(d: Daemon, pods: int, timeout: float = 120) -> float:
    """Seconds until `pods` pods list as ready and as many containers as running."""
    t0 = time.monotonic()
    while True:
        items = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        cts = d.runtime.ListContainers(pb.ListContainersRequest()).containers
        if sum(p.state == READY for p in items) == pods == sum(c.state == RUNNING for c in cts):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, "pods or containers never read ready again"
        time.sleep(0.1)


def restart(d: Daemon) -> tuple[float, float, float]:
    """SIGTERM, wait for the exit, start again: (seconds to stop, seconds from start to
    the first successful Status, the monotonic time of the start)."""
    t0 = time.monotonic()
    assert d.stop() == 0, d.log.read_text()[-4000:]
    stopped = time.monotonic() - t0
    t0 = time.monotonic()
    d.start(timeout=120)
    while True:
        try:
            d.runtime.Status(pb.StatusRequest())
            break
        except Exception:  # any failure means "not serving yet"
            assert time.monotonic() - t0 < 120
            time.sleep(0.05)
    return stopped, time.monotonic() - t0, t0


async def attach_round_trip(d: Daemon, cid: str, word: bytes, protocol: str) -> None:
    req = pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    out = Sink()
    code = await asyncio.wait_for(
        client.remote_command(
            d.runtime.Attach(req).url,
            protocol=protocol,
            stdin=feed(word, before_eof=lambda: out.wait_for(word)),
            stdout=out,
            stderr=out,
            tty=False,
        ),
        30,
    )
    assert (code, out.data) == (0, word)


async def test_graceful_restart_with_50_pods(env: PodEnv) -> None:
    d = env.daemon
    t0 = time.monotonic()
    pods = make_pods(env, PODS, lambda: [("cat", container_config("cat", "cat", stdin=True))])
    print(f"\nset-up: {PODS} pods in {time.monotonic() - t0:.1f}s")
    try:
        wait_ready(d, PODS)
        cids = [p.containers[0] for p in pods]
        pids = {cid: pid_of(d, cid) for cid in cids}
        stopped, to_status, started = restart(d)
        assert all(alive(pid) for pid in pids.values())
        wait_ready(d, PODS)
        to_ready = time.monotonic() - started
        print(
            f"restart: stop {stopped:.2f}s, start -> first Status {to_status:.2f}s, "
            f"start -> all {PODS} pods ready and containers running {to_ready:.2f}s"
        )
        await check_pods(d, pods, pids)
    finally:
        teardown(d)


async def check_pods(d: Daemon, pods: list, pids: dict[str, int]) -> None:  # type: ignore[type-arg]
    rt = d.runtime
    for i, pod in enumerate(pods):
        st = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id)).status
        assert st.state == READY and st.network.ip
        cid = pod.containers[0]
        assert rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.state == (
            RUNNING
        )
        assert pid_of(d, cid) == pids[cid] and alive(pids[cid])
        url = rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True)).url
        assert "/attach/" in url
        if i % 10 == 0:  # a streaming round trip and an exec on one pod in ten
            protocol = "spdy" if i % 20 == 0 else "websocket"
            await attach_round_trip(d, cid, f"ping-{i}\n".encode(), protocol)
            r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "ok"], timeout=20))
            assert (r.exit_code, r.stdout) == (0, b"ok\n")
            assert await run_exec(d, cid, "sh", "-c", "echo $((6*7))", protocol=protocol) == (
                0, b"42\n", b"",
            )  # fmt: skip

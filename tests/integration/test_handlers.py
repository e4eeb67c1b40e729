"""RuntimeClass handlers: runc, crun (hybrid-cgroup wrapper) and runsc (gVisor) each run
the same pod and container workload end to end."""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling.vmrt.kernel import SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR, unavailable_reason
from tests.integration.pod_fixtures import PodEnv
from tests.integration.test_streaming import feed, run_exec, wait_http
from tests.support.pods import container_config, pod_config, rpc_code, status, wait_state

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plhandl0", "10.93.3.0/24"
HANDLERS = [h for h in ("runc", "crun", "runsc") if shutil.which(h)]
# the qemu handler: listed when qemu and a guest kernel are installed (tested on its own
# in test_vm_handler.py: a guest boots in seconds, too slow for the shared workload here)
VM_LISTED = not unavailable_reason(SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR)
RUNNING, EXITED = pb.ContainerState.CONTAINER_RUNNING, pb.ContainerState.CONTAINER_EXITED


def run_pod(e: PodEnv, handler: str) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_dir=e.logs)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    req = pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)
    return e.daemon.runtime.RunPodSandbox(req).pod_sandbox_id, cfg


def start(e: PodEnv, pod_id: str, pcfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    rt = e.daemon.runtime
    cid = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pcfg)
    ).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return str(cid)


def test_status_lists_the_installed_handlers(clean: PodEnv) -> None:
    st = clean.daemon.runtime.Status(pb.StatusRequest())
    assert sorted(h.name for h in st.runtime_handlers) == sorted(HANDLERS + ["vm"] * VM_LISTED)


def test_unknown_handler_names_the_configured_ones(clean: PodEnv) -> None:
    req = pb.RunPodSandboxRequest(config=pod_config(), runtime_handler="kata")
    with pytest.raises(grpc.RpcError) as e:
        clean.daemon.runtime.RunPodSandbox(req)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    msg = e.value.details() or ""
    assert "'kata'" in msg and "runc" in msg and "[runtimes.kata]" in msg
    assert clean.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []


@pytest.mark.parametrize("handler", HANDLERS)
def test_workload_on_each_handler(clean: PodEnv, handler: str) -> None:
    d = clean.daemon
    pod_id, pcfg = run_pod(clean, handler)
    pod = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert pod.runtime_handler == handler
    script = "echo started; mkdir /www && echo page > /www/index.html && httpd -f -p 8080 -h /www"
    web = start(clean, pod_id, pcfg, container_config("web", "sh", "-c", script))
    assert wait_state(d, web, RUNNING).state == RUNNING
    # the pod's network: reached from the host on the pod IP
    assert _get(f"http://{pod.network.ip}:8080/") == "page\n"
    r = d.runtime.ExecSync(
        pb.ExecSyncRequest(
            container_id=web, cmd=["sh", "-c", "echo o; echo e >&2; exit 2"], timeout=20
        )
    )
    assert (r.stdout, r.stderr, r.exit_code) == (b"o\n", b"e\n", 2)
    hostname = d.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=web, cmd=["hostname"], timeout=20)
    )
    assert hostname.stdout.decode().strip() == pcfg.hostname
    log = Path(status(d, web).status.log_path).read_text()
    assert "stdout F started" in log
    stats = d.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=web)).stats
    assert stats.memory.working_set_bytes.value > 0
    short = start(clean, pod_id, pcfg, container_config("short", "sh", "-c", "exit 5"))
    st = wait_state(d, short, EXITED, timeout=30)
    assert (st.state, st.exit_code) == (EXITED, 5)
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=web, timeout=2))
    assert status(d, web).status.state == EXITED
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert rpc_code(lambda: status(d, web)) == grpc.StatusCode.NOT_FOUND


def _get(url: str) -> str:
    for _ in range(100):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize("handler", HANDLERS)
async def test_streaming_on_each_handler(clean: PodEnv, handler: str) -> None:
    d = clean.daemon
    pod_id, pcfg = run_pod(clean, handler)
    script = "mkdir /www && echo page > /www/index.html && httpd -f -p 8080 -h /www"
    web = start(clean, pod_id, pcfg, container_config("web", "sh", "-c", script))
    wait_state(d, web, RUNNING)
    code, out, err = await run_exec(
        d, web, "sh", "-c", "echo out; echo err >&2; exit 4", protocol="spdy"
    )
    assert (code, out, err) == (4, b"out\n", b"err\n")
    code, out, _ = await run_exec(d, web, "cat", protocol="websocket", stdin=feed(b"hello\n"))
    assert (code, out) == (0, b"hello\n")
    assert b"page" in await wait_http(d, pod_id, "spdy")

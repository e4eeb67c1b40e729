"""The `vm` RuntimeClass handler: each container in a qemu guest of its own (podling-vmrt
under conmon). Slow: a guest boots in several seconds under TCG."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.vmrt.kernel import SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR, unavailable_reason
from tests.integration.pod_fixtures import PodEnv
from tests.support.pods import container_config, pod_config, start_container, status, wait_state

REASON = unavailable_reason(SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(bool(REASON), reason=f"no VM guest can boot here: {REASON}"),
]
BRIDGE, SUBNET = "plvm0", "10.93.24.0/24"
RUNNING, EXITED = pb.ContainerState.CONTAINER_RUNNING, pb.ContainerState.CONTAINER_EXITED
BOOT = 120  # seconds a guest may take to boot and run under TCG on a loaded machine


def run_pod(e: PodEnv) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_dir=e.logs)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    req = pb.RunPodSandboxRequest(config=cfg, runtime_handler="vm")
    return e.daemon.runtime.RunPodSandbox(req).pod_sandbox_id, cfg


def test_status_lists_vm(clean: PodEnv) -> None:
    st = clean.daemon.runtime.Status(pb.StatusRequest())
    assert "vm" in [h.name for h in st.runtime_handlers]


def test_output_exit_code_and_own_kernel(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = run_pod(clean)
    script = "echo hello-vm; echo to-stderr >&2; echo kernel=$(uname -r); exit 3"
    cid = start_container(clean.daemon, pod_id, pcfg, container_config("short", "sh", "-c", script))
    st = wait_state(d, cid, EXITED, timeout=BOOT)
    assert (st.state, st.exit_code) == (EXITED, 3)
    log = Path(status(d, cid).status.log_path).read_text()
    assert "stdout F hello-vm" in log and "stderr F to-stderr" in log
    guest = log.split("kernel=", 1)[1].split()[0]
    assert guest and guest != os.uname().release  # the guest's kernel, not the node's
    assert "Linux version" not in log  # kernel messages stay on the guest console


def test_running_exec_network_and_stop(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = run_pod(clean)
    pod = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    script = "mkdir -p /www && echo page > /www/index.html && exec httpd -f -p 8080 -h /www"
    cid = start_container(clean.daemon, pod_id, pcfg, container_config("web", "sh", "-c", script))
    assert wait_state(d, cid, RUNNING).state == RUNNING
    r = d.runtime.ExecSync(
        pb.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo o; echo e >&2; exit 2"], timeout=BOOT
        )
    )
    assert (r.stdout, r.stderr, r.exit_code) == (b"o\n", b"e\n", 2)
    uname = d.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["uname", "-r"]))
    assert uname.stdout.decode().strip() != os.uname().release
    assert _get(f"http://{pod.network.ip}:8080/") == "page\n"  # the guest owns the pod IP
    began = time.monotonic()
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10))
    assert time.monotonic() - began < 15
    st = status(d, cid).status
    assert st.state == EXITED and st.exit_code in (143, 137)


def _get(url: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)

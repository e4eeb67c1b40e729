"""The pod and container verbs of `podling` as a user types them, against a real podlingd
that runs pods on this module's own bridge (plcli0), subnet and cgroup parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cri_api.v1 import api_pb2 as pb

from tests.support.daemon import Daemon
from tests.support.images import build_image, busybox_rootfs_layer, write_oci_archive

pytestmark = pytest.mark.root

PODLING = str(Path(sys.executable).parent / "podling")
BRIDGE, SUBNET, CGROUP_PARENT = "plcli0", "10.92.0.0/24", "podling-cli-test"
BUSYBOX = "example.com/cli/busybox:1"


def _cgroup_dirs() -> list[Path]:
    return [h / CGROUP_PARENT for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One podlingd for the module, with busybox loaded through `podling load`. The bridge
    and cgroup parent exist before the first test and go after the last, so the per-test
    leak check sees only what a test itself leaves."""
    base = tmp_path_factory.mktemp("clipods")
    (base / "cni").mkdir()
    config = (
        f'[network]\ncni_conf_dir = "{base / "cni"}"\ndefault_bridge = "{BRIDGE}"\n'
        f'default_subnet = "{SUBNET}"\n[runtime]\ncgroup_parent = "/{CGROUP_PARENT}"\n'
    )
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    for d in _cgroup_dirs():
        if (d.parent / "cgroup.procs").exists():
            d.mkdir(exist_ok=True)
    d = Daemon(base / "daemon", config)
    try:
        d.start()
        img = build_image([busybox_rootfs_layer()], "gzip", {"Cmd": ["sh"]})
        archive = write_oci_archive(img, BUSYBOX, base / "busybox.tar")
        assert BUSYBOX in podling(d, "load", str(archive)).stdout
        yield d
    finally:
        d.stop()
        subprocess.run(["ip", "link", "del", BRIDGE], check=False)
        for cg in _cgroup_dirs():
            if cg.is_dir():
                cg.rmdir()


@pytest.fixture
def clean(daemon: Daemon) -> Iterator[Daemon]:
    """Every test ends with no pods (and so no containers), even when it fails midway."""
    yield daemon
    for pod in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id))


def podling(d: Daemon, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": d.endpoint}
    proc = subprocess.run([PODLING, *args], capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert proc.returncode == 0, f"podling {' '.join(args)}: {proc.stderr}"
    return proc


def write_configs(tmp: Path, name: str, script: str) -> tuple[str, str]:
    """Pod and container configs as crictl users write them (YAML, snake_case)."""
    pod = {
        "metadata": {"name": name, "namespace": "cli", "uid": f"uid-{name}", "attempt": 1},
        "hostname": name,
        "log_directory": str(tmp / "logs"),
        "labels": {"suite": "cli"},
        "linux": {},
    }
    ct = {
        "metadata": {"name": f"{name}-ct"},
        "image": {"image": BUSYBOX},
        "command": ["sh", "-c", script],
        "log_path": f"{name}.log",
        "labels": {"role": "main"},
    }
    (tmp / f"{name}-pod.yaml").write_text(yaml.safe_dump(pod))
    (tmp / f"{name}-ct.yaml").write_text(yaml.safe_dump(ct))
    return str(tmp / f"{name}-ct.yaml"), str(tmp / f"{name}-pod.yaml")


def wait_for(check: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_run_ps_logs_exec_stats_stop_rm(clean: Daemon, tmp_path: Path) -> None:
    d = clean
    cid = podling(
        d, "run", *write_configs(tmp_path, "hello", "echo hello; echo oops >&2; sleep 1000")
    ).stdout.strip()
    assert len(cid) == 64
    (pod_id,) = podling(d, "pods", "-q").stdout.split()

    row = podling(d, "ps").stdout.splitlines()[1].split()
    assert row[0] == cid[:13] and row[1] == BUSYBOX and "Running" in row
    assert row[-3:] == ["0", pod_id[:13], "hello"]
    assert podling(d, "ps", "-q", "--label", "role=main").stdout.split() == [cid]
    pods_row = podling(d, "pods").stdout.splitlines()[1].split()
    assert pods_row[0] == pod_id[:13] and pods_row[-5:] == ["Ready", "hello", "cli", "1", "runc"]

    doc = json.loads(podling(d, "inspect", cid[:12]).stdout)
    assert doc["status"]["state"] == "CONTAINER_RUNNING" and doc["info"]["pid"] > 0
    assert doc["status"]["logPath"] == str(tmp_path / "logs" / "hello.log")
    podinfo = json.loads(podling(d, "inspectp", pod_id[:12]).stdout)
    assert podinfo["status"]["network"]["ip"].startswith("10.92.0.")

    def logged() -> bool:
        return "hello" in podling(d, "logs", cid).stdout

    wait_for(logged)
    logs = podling(d, "logs", cid)
    assert (logs.stdout, logs.stderr) == ("hello\n", "oops\n")
    assert podling(d, "logs", "-t", cid).stdout.split(" ", 1)[1] == "hello\n"

    hi = podling(d, "exec", cid, "echo", "hi")
    assert (hi.stdout, hi.stderr, hi.returncode) == ("hi\n", "", 0)
    err = podling(d, "exec", cid, "sh", "-c", "echo bad >&2; exit 3", ok=False)
    assert (err.stdout, err.stderr, err.returncode) == ("", "bad\n", 3)

    stats = podling(d, "stats", "-s", "0").stdout.splitlines()
    assert stats[1].split()[:2] == [cid[:13], "hello-ct"]
    as_json = json.loads(podling(d, "stats", "-o", "json").stdout)
    assert [s["attributes"]["id"] for s in as_json["stats"]] == [cid]
    assert podling(d, "statsp", "-s", "0").stdout.splitlines()[1].split()[:2] == [
        "hello",
        pod_id[:13],
    ]
    assert podling(d, "update", "--memory", "64m", cid).stdout.strip() == cid

    refused = podling(d, "rm", cid, ok=False)
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert podling(d, "stop", "-t", "1", cid).stdout.strip() == cid
    assert podling(d, "ps", "-q").stdout == ""
    assert "Exited" in podling(d, "ps", "-a").stdout
    started = time.monotonic()
    assert podling(d, "logs", "-f", cid).stdout == "hello\n"  # not running: no waiting
    assert time.monotonic() - started < 10
    assert podling(d, "rm", cid).stdout.strip() == cid
    assert podling(d, "ps", "-a", "-q").stdout == ""

    assert podling(d, "stopp", pod_id).stdout.strip() == f"Stopped sandbox {pod_id}"
    assert "NotReady" in podling(d, "pods").stdout
    assert podling(d, "rmp", pod_id).stdout.strip() == f"Removed sandbox {pod_id}"
    assert podling(d, "pods", "-q").stdout == ""


def test_logs_follow_ends_when_the_container_exits(clean: Daemon, tmp_path: Path) -> None:
    d = clean
    script = "sleep 1; for i in 1 2 3; do echo line$i; sleep 0.3; done; echo done >&2"
    cid = podling(d, "run", *write_configs(tmp_path, "follow", script)).stdout.strip()
    started = time.monotonic()
    followed = podling(d, "logs", "-f", cid)
    assert followed.stdout == "line1\nline2\nline3\n" and followed.stderr == "done\n"
    assert time.monotonic() - started < 15
    assert podling(d, "ps", "-q").stdout == ""  # it had exited when logs -f returned
    (pod_id,) = podling(d, "pods", "-q").stdout.split()
    assert podling(d, "rmp", "-f", pod_id).stdout.strip() == f"Removed sandbox {pod_id}"


def test_errors_are_one_line(clean: Daemon, tmp_path: Path) -> None:
    d = clean
    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata: {name: x}\nno_such_field: 1\n")
    for args, fragment in (
        (["runp", str(bad)], "no_such_field"),
        (["stop", "0123456789ab"], "no such container: 0123456789ab"),
        (["rmp", "0123456789ab"], "no such pod: 0123456789ab"),
        (["exec", "0123456789ab", "true"], "no such container"),
    ):
        proc = podling(d, *args, ok=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert fragment in proc.stderr and "Traceback" not in proc.stderr
    # a pod the daemon refuses (no uid) is refused in one line, and nothing is left
    ct, pod = write_configs(tmp_path, "nouid", "true")
    doc = yaml.safe_load(Path(pod).read_text())
    del doc["metadata"]["uid"]
    Path(pod).write_text(yaml.safe_dump(doc))
    refused = podling(d, "run", ct, pod, ok=False)
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr
    assert podling(d, "pods", "-q").stdout == ""

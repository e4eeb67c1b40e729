"""Containers end to end on real runc, conmon, CNI and overlayfs, through the CRI API."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.pods import (
    BUSYBOX,
    container_config,
    pod_config,
    rpc_code,
    run_pod,
    start_container,
    status,
    wait_state,
)

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plctr0", "10.93.1.0/24"
RUNNING, EXITED = pb.ContainerState.CONTAINER_RUNNING, pb.ContainerState.CONTAINER_EXITED


def new_pod(e: PodEnv) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_dir=e.logs)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    return run_pod(e.daemon, cfg), cfg


def log_lines(st: pb.ContainerStatus) -> list[list[str]]:
    return [line.split(" ", 3) for line in Path(st.log_path).read_text().splitlines()]


def test_lifecycle_status_list_and_logs(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cfg = container_config(
        "main",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; printf partial; sleep 0.3; echo -end; sleep 1000",
        labels={"role": "main"},
        annotations={"a": "b"},
    )
    cfg.envs.add(key="GREETING", value="hi")
    cid = d.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pcfg)
    ).container_id
    created = status(d, cid).status
    assert created.state == pb.ContainerState.CONTAINER_CREATED and created.started_at == 0
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    st = wait_state(d, cid, RUNNING)
    assert st.started_at >= st.created_at > 0
    images = d.images.ListImages(pb.ListImagesRequest()).images
    [image] = [i for i in images if BUSYBOX in i.repo_tags]
    assert st.image.image == BUSYBOX and st.image_ref == image.id and st.image_id == image.id
    assert dict(st.labels) == {"role": "main"} and dict(st.annotations) == {"a": "b"}
    assert st.log_path == str(clean.logs / "main.log")
    verbose = status(d, cid, verbose=True)
    info = json.loads(verbose.info["info"])
    assert info["pid"] > 0 and info["runtimeSpec"]["process"]["args"][0] == "sh"
    assert "GREETING=hi" in info["runtimeSpec"]["process"]["env"]
    time.sleep(0.6)
    lines = log_lines(st)
    out = [line[2:] for line in lines if line[1] == "stdout"]
    # a line written in two pieces: conmon marks the first part partial (P)
    assert out == [["F", "to-out"], ["P", "partial"], ["F", "-end"]]
    assert [line[2:] for line in lines if line[1] == "stderr"] == [["F", "to-err"]]
    assert all(line[0].endswith(("Z", "+00:00")) for line in lines)  # RFC 3339 timestamps
    listed = d.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [c.id for c in listed] == [cid] and listed[0].pod_sandbox_id == pod_id

    def flt(**kw: object) -> list[str]:
        req = pb.ListContainersRequest(filter=pb.ContainerFilter(**kw))  # type: ignore[arg-type]
        return [c.id for c in d.runtime.ListContainers(req).containers]

    assert flt(id=cid[:10]) == [cid]
    assert flt(pod_sandbox_id=pod_id[:10]) == [cid]
    assert flt(label_selector={"role": "main"}) == [cid]
    assert flt(label_selector={"role": "other"}) == []
    assert flt(state=pb.ContainerStateValue(state=EXITED)) == []
    # sh is PID 1 of its PID namespace: it ignores SIGTERM (no handler), so the grace
    # period runs out and SIGKILL follows
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
    st = status(d, cid).status
    assert st.state == EXITED and st.exit_code == 128 + signal.SIGKILL and st.reason == "Error"
    assert st.finished_at >= st.started_at
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert rpc_code(lambda: status(d, cid)) == grpc.StatusCode.NOT_FOUND
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid))  # idempotent
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))


def test_exit_codes_and_completed(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    ok = start_container(d, pod_id, pcfg, container_config("ok", "true"))
    bad = start_container(d, pod_id, pcfg, container_config("bad", "sh", "-c", "exit 3"))
    st_ok, st_bad = wait_state(d, ok, EXITED), wait_state(d, bad, EXITED)
    assert (st_ok.exit_code, st_ok.reason) == (0, "Completed")
    assert (st_bad.exit_code, st_bad.reason) == (3, "Error")


def test_stop_with_grace_and_sigkill(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    polite = start_container(
        d,
        pod_id,
        pcfg,
        container_config(
            "polite", "sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"
        ),
    )
    stubborn = start_container(
        d, pod_id, pcfg, container_config("stubborn", "sh", "-c", "trap '' TERM; sleep 1000")
    )
    time.sleep(0.3)
    start = time.monotonic()
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=polite, timeout=10))
    assert time.monotonic() - start < 5
    assert status(d, polite).status.exit_code == 7
    start = time.monotonic()
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1))
    took = time.monotonic() - start
    assert 1 <= took < 8, took
    assert status(d, stubborn).status.exit_code == 137


def test_memory_limit_oom_kills(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cfg = container_config(
        "hog", "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 100"
    )
    cfg.linux.resources.memory_limit_in_bytes = 32 << 20
    cid = start_container(d, pod_id, pcfg, cfg)
    st = wait_state(d, cid, EXITED, timeout=60)
    assert (st.state, st.exit_code, st.reason) == (EXITED, 137, "OOMKilled")


def test_exec_sync_output_exit_code_and_timeout(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cid = start_container(d, pod_id, pcfg, container_config("c", "sleep", "1000"))
    r = d.runtime.ExecSync(
        pb.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo out; echo err >&2; exit 5"], timeout=10
        )
    )
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 5)
    start = time.monotonic()
    code = rpc_code(
        lambda: d.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1)
        )
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 10
    ps = d.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ps"], timeout=10)).stdout
    assert b"sleep 30" not in ps  # the timed-out command was killed
    big = d.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["head", "-c", "3000000", "/dev/zero"], timeout=10)
    )
    assert len(big.stdout) == 3000000


def test_update_resources_and_reopen_log(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cid = start_container(
        d,
        pod_id,
        pcfg,
        container_config("c", "sh", "-c", "while true; do echo tick; sleep 0.1; done"),
    )
    wait_state(d, cid, RUNNING)
    d.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
        )
    )
    cgroup = next(Path("/sys/fs/cgroup/memory").rglob(f"{cid}/memory.limit_in_bytes"))
    assert int(cgroup.read_text()) == 64 << 20
    log = Path(status(d, cid).status.log_path)
    rotated = log.with_suffix(".1")
    log.rename(rotated)
    d.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    time.sleep(0.5)
    assert log.exists() and "tick" in log.read_text()


def test_container_stats(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cid = start_container(
        d,
        pod_id,
        pcfg,
        container_config("c", "sh", "-c", "head -c 4000000 /dev/urandom > /tmp/blob; sleep 1000"),
    )
    time.sleep(0.8)
    st = d.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert st.attributes.id == cid and st.attributes.metadata.name == "c"
    assert st.cpu.usage_core_nano_seconds.value > 0
    assert st.memory.working_set_bytes.value > 0
    assert st.writable_layer.used_bytes.value >= 4000000
    listed = d.runtime.ListContainerStats(pb.ListContainerStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [cid]


def test_events_stream(clean: PodEnv) -> None:
    d = clean.daemon
    seen: list[tuple[str, int]] = []
    stream = d.runtime.GetContainerEvents(pb.GetEventsRequest())

    def read() -> None:
        try:
            for ev in stream:
                seen.append((ev.container_id, ev.container_event_type))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    pod_id, pcfg = new_pod(clean)
    cid = start_container(d, pod_id, pcfg, container_config("c", "true"))
    wait_state(d, cid, EXITED)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    time.sleep(0.3)
    stream.cancel()
    reader.join(5)
    kinds = [k for c, k in seen if c == cid]
    T = pb.ContainerEventType
    assert kinds == [
        T.CONTAINER_CREATED_EVENT,
        T.CONTAINER_STARTED_EVENT,
        T.CONTAINER_STOPPED_EVENT,
        T.CONTAINER_DELETED_EVENT,
    ]
    assert any(c == pod_id for c, _ in seen)  # the pod's own events come too


def test_bad_container_requests_leave_nothing(clean: PodEnv, tmp_path: Path) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    bundles = set((d.state / "containers").iterdir())

    def create(cfg: pb.ContainerConfig, pod: str = pod_id) -> object:
        return d.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pcfg)
        )

    missing = container_config("m", "true")
    missing.mounts.add(container_path="/data", host_path=str(tmp_path / "does-not-exist"))
    assert rpc_code(lambda: create(missing)) == grpc.StatusCode.INVALID_ARGUMENT
    no_image = container_config("n", "true")
    no_image.image.image = "localhost/not/pulled:1"
    assert rpc_code(lambda: create(no_image)) == grpc.StatusCode.NOT_FOUND
    assert (
        rpc_code(lambda: create(container_config("", "true"))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        rpc_code(lambda: create(container_config("x", "true"), pod="f" * 64))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        rpc_code(lambda: create(container_config("x", "true"), pod=""))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    rt = d.runtime
    assert (
        rpc_code(lambda: rt.StartContainer(pb.StartContainerRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        rpc_code(lambda: rt.StartContainer(pb.StartContainerRequest(container_id="f" * 64)))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        rpc_code(lambda: rt.ContainerStatus(pb.ContainerStatusRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        rpc_code(lambda: rt.ExecSync(pb.ExecSyncRequest(container_id="f" * 64, cmd=["true"])))
        == grpc.StatusCode.NOT_FOUND
    )
    assert rt.ListContainers(pb.ListContainersRequest()).containers == []
    assert set((d.state / "containers").iterdir()) == bundles
    # a duplicate name in the pod is ALREADY_EXISTS
    create(container_config("dup", "true"))
    assert (
        rpc_code(lambda: create(container_config("dup", "true"))) == grpc.StatusCode.ALREADY_EXISTS
    )


def test_start_twice_and_exec_on_stopped_are_failed_precondition(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cid = start_container(d, pod_id, pcfg, container_config("c", "true"))
    wait_state(d, cid, EXITED)
    assert (
        rpc_code(lambda: d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        rpc_code(lambda: d.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["true"])))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_containers_survive_a_daemon_restart(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    long = start_container(d, pod_id, pcfg, container_config("long", "sleep", "1000"))
    short = start_container(
        d, pod_id, pcfg, container_config("short", "sh", "-c", "sleep 1; exit 4")
    )
    wait_state(d, long, RUNNING)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)  # no clean stop: a crash
    d.proc.wait()
    d.proc = None
    time.sleep(2)  # "short" exits while the daemon is down
    d.start()
    st_short = status(d, short).status
    assert (st_short.state, st_short.exit_code) == (EXITED, 4)
    assert status(d, long).status.state == RUNNING
    r = d.runtime.ExecSync(pb.ExecSyncRequest(container_id=long, cmd=["echo", "still"], timeout=10))
    assert r.stdout == b"still\n"
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=long, timeout=1))
    assert status(d, long).status.state == EXITED


def _exec(d: object, cid: str, *cmd: str) -> pb.ExecSyncResponse:
    return d.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10))  # type: ignore[attr-defined,no-any-return]


def test_security_context_mounts_and_user(clean: PodEnv, tmp_path: Path) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").write_text("from the host\n")
    link = tmp_path / "link-to-shared"
    link.symlink_to(shared)  # a host path that is a symlink is resolved on the host
    cfg = container_config("locked", "sleep", "1000")
    sc = cfg.linux.security_context
    sc.run_as_user.value = 1000
    sc.readonly_rootfs = True
    sc.no_new_privs = True
    sc.capabilities.drop_capabilities.append("ALL")
    sc.seccomp.profile_type = pb.SecurityProfile.ProfileType.RuntimeDefault
    cfg.mounts.add(container_path="/data", host_path=str(link), readonly=True)
    cid = start_container(d, pod_id, pcfg, cfg)
    assert _exec(d, cid, "id", "-u").stdout == b"1000\n"
    assert _exec(d, cid, "cat", "/data/data").stdout == b"from the host\n"
    assert _exec(d, cid, "touch", "/data/new").exit_code != 0
    assert _exec(d, cid, "touch", "/newfile").exit_code != 0  # read-only rootfs
    caps = _exec(d, cid, "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    assert int(caps, 16) == 0
    [m] = status(d, cid).status.mounts
    assert (m.container_path, m.host_path, m.readonly) == ("/data", str(shared), True)
    priv = container_config("priv", "sleep", "1000")
    priv.linux.security_context.privileged = True
    pid = start_container(d, pod_id, pcfg, priv)
    priv_caps = int(_exec(d, pid, "grep", "CapEff", "/proc/self/status").stdout.split()[1], 16)
    own = Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0]
    assert priv_caps == int(own, 16)  # everything podling itself holds


def test_imagefsinfo_counts_writable_layers_as_container_fs(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    before = d.images.ImageFsInfo(pb.ImageFsInfoRequest())
    start_container(
        d,
        pod_id,
        pcfg,
        container_config("w", "sh", "-c", "head -c 3000000 /dev/urandom > /blob; sleep 1000"),
    )
    time.sleep(1)
    after = d.images.ImageFsInfo(pb.ImageFsInfoRequest())
    grown = (
        after.container_filesystems[0].used_bytes.value
        - before.container_filesystems[0].used_bytes.value
    )
    assert grown >= 3000000
    # the image filesystem does not count the container's writes
    assert (
        after.image_filesystems[0].used_bytes.value == before.image_filesystems[0].used_bytes.value
    )

"""Recursive read-only mounts (Mount.recursive_read_only) on a real podlingd: every
submount of the volume is read-only too on runc and crun; runsc is refused up front."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.pods import container_config, pod_config, rpc_code, run_pod, start_container

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plrro0", "10.93.18.0/24"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A host dir with a tmpfs mounted inside it (a submount)."""
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(vol / "sub")], check=True)
    yield vol
    subprocess.run(["umount", "-l", str(vol / "sub")], check=True)


def volume_mount(vol: Path, recursive: bool) -> pb.Mount:
    return pb.Mount(
        container_path="/vol",
        host_path=str(vol),
        readonly=True,
        recursive_read_only=recursive,
        propagation=pb.PROPAGATION_PRIVATE,
    )


def writes(e: PodEnv, cid: str, path: str) -> bool:
    req = pb.ExecSyncRequest(container_id=cid, cmd=["touch", path], timeout=10)
    r = e.daemon.runtime.ExecSync(req)
    assert r.exit_code == 0 or b"Read-only file system" in r.stderr, r
    return r.exit_code == 0


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_submounts_are_read_only_too(clean: PodEnv, volume: Path, handler: str) -> None:
    cfg = pod_config(log_dir=clean.logs)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    pod_id = run_pod(clean.daemon, cfg, handler)
    plain = container_config("plain", "sleep", "1000", mounts=[volume_mount(volume, False)])
    rro = container_config("rro", "sleep", "1000", mounts=[volume_mount(volume, True)])
    plain_id = start_container(clean.daemon, pod_id, cfg, plain)
    rro_id = start_container(clean.daemon, pod_id, cfg, rro)
    assert not writes(clean, plain_id, "/vol/top")
    assert writes(clean, plain_id, "/vol/sub/plain")  # a plain ro bind leaves submounts rw
    assert not writes(clean, rro_id, "/vol/top")
    assert not writes(clean, rro_id, "/vol/sub/rro")
    assert (volume / "sub" / "plain").exists() and not (volume / "sub" / "rro").exists()


def test_status_reports_the_feature(clean: PodEnv) -> None:
    st = clean.daemon.runtime.Status(pb.StatusRequest())
    features = {h.name: h.features.recursive_read_only_mounts for h in st.runtime_handlers}
    assert features["runc"] and features["crun"]
    assert not features.get("runsc", False)


def test_refusals(clean: PodEnv, volume: Path) -> None:
    cfg = pod_config(log_dir=clean.logs)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    pod_id = run_pod(clean.daemon, cfg)
    rt = clean.daemon.runtime
    writable = volume_mount(volume, True)
    writable.readonly = False
    ct = container_config("rw", "sleep", "1000", mounts=[writable])
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=ct, sandbox_config=cfg)
    assert rpc_code(lambda: rt.CreateContainer(req)) == grpc.StatusCode.INVALID_ARGUMENT
    handlers = {h.name for h in rt.Status(pb.StatusRequest()).runtime_handlers}
    if "runsc" in handlers:
        gcfg = pod_config(log_dir=clean.logs)
        gcfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
        gvisor_pod = run_pod(clean.daemon, gcfg, "runsc")
        ct = container_config("g", "sleep", "1000", mounts=[volume_mount(volume, True)])
        req = pb.CreateContainerRequest(pod_sandbox_id=gvisor_pod, config=ct, sandbox_config=gcfg)
        with pytest.raises(grpc.RpcError) as err:
            rt.CreateContainer(req)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'runsc' cannot make recursive read-only mounts" in (err.value.details() or "")
    assert rt.ListContainers(pb.ListContainersRequest()).containers == []

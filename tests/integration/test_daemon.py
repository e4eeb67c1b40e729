"""The daemon itself: start, Version/Status/RuntimeConfig, locks, stale socket, bad config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


def test_version_status_runtimeconfig(tmp_path: Path) -> None:
    cni = tmp_path / "cni"
    cni.mkdir()
    cfg = f'[network]\ncni_conf_dir = "{cni}"\n'
    with Daemon(tmp_path, cfg) as d:
        v = d.runtime.Version(pb.VersionRequest(version="v1"))
        assert (v.runtime_name, v.runtime_api_version) == ("podling", "v1")
        assert v.runtime_version
        st = d.runtime.Status(pb.StatusRequest(verbose=True))
        conds = {c.type: c for c in st.status.conditions}
        assert conds["RuntimeReady"].status is True
        # the conf dir was empty: the daemon wrote its default network there at start
        assert conds["NetworkReady"].status is True
        written = json.loads((cni / "10-podling.conflist").read_text())
        assert [p["type"] for p in written["plugins"]] == ["bridge", "portmap"]
        effective = json.loads(st.info["config"])
        assert effective["root"] == str(d.root)
        rc = d.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
        assert rc.linux.cgroup_driver == pb.CgroupDriver.CGROUPFS
        assert (os.stat(d.socket).st_mode & 0o777) == 0o660


def test_network_ready_with_a_conflist_whose_plugins_exist(tmp_path: Path) -> None:
    cni = tmp_path / "cni"
    cni.mkdir()
    conflist = {
        "cniVersion": "1.0.0",
        "name": "t",
        "plugins": [{"type": "bridge"}, {"type": "loopback"}],
    }
    (cni / "10-t.conflist").write_text(json.dumps(conflist))
    with Daemon(tmp_path, f'[network]\ncni_conf_dir = "{cni}"\n') as d:
        conds = {c.type: c for c in d.runtime.Status(pb.StatusRequest()).status.conditions}
        assert conds["NetworkReady"].status is True


def test_unbuilt_rpcs_answer_unimplemented_by_name(tmp_path: Path) -> None:
    with Daemon(tmp_path) as d:
        with pytest.raises(grpc.RpcError) as e:
            d.runtime.UpdatePodSandboxResources(
                pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id="x")
            )
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "UpdatePodSandboxResources" in (e.value.details() or "")
        with pytest.raises(grpc.RpcError) as e2:
            d.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id="x"))
        assert e2.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "CheckpointContainer" in (e2.value.details() or "")


def test_one_line_log_per_rpc(tmp_path: Path) -> None:
    d = Daemon(tmp_path, extra_args=["--log-format", "json"]).start()
    d.runtime.Version(pb.VersionRequest())
    assert d.stop() == 0
    lines = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
    rpc = [x for x in lines if x.get("method") == "Version"]
    assert len(rpc) == 1 and rpc[0]["outcome"] == "OK" and "duration_ms" in rpc[0]


def test_second_daemon_on_same_state_is_refused(tmp_path: Path) -> None:
    with Daemon(tmp_path) as first:
        second = Daemon(tmp_path)
        proc = subprocess.run(second.command(), capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0
        assert "another podlingd" in proc.stderr
        first.runtime.Version(pb.VersionRequest())  # the first one still serves


def test_stale_socket_of_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.proc = None
    assert d.socket.exists()  # left behind by the dead daemon
    with Daemon(tmp_path) as again:
        assert again.runtime.Version(pb.VersionRequest()).runtime_name == "podling"


def test_bad_config_stops_start_with_one_line(tmp_path: Path) -> None:
    d = Daemon(tmp_path, "[images]\nmax_concurrent_downloads = 'many'\n")
    proc = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1
    assert str(d.config) in err[0] and "images.max_concurrent_downloads" in err[0]
    assert "integer" in err[0]


def test_podlingd_config_prints_the_commented_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "podling.cli.daemon", "config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("# podling configuration")
    assert 'socket = "/run/podling/podling.sock"' in out


def test_start_logs_the_cheap_doctor_checks(tmp_path: Path) -> None:
    d = Daemon(tmp_path, '[runtime]\nconmon = "no-such-conmon"\n').start()
    assert d.stop() == 0
    log = d.log.read_text()
    assert "doctor: runtime-binaries" in log and "no-such-conmon" in log

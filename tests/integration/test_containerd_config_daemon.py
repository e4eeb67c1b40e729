"""`podlingd --containerd-config`: imported settings win over podling's own config, and
each key it could not map is logged once at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

CONTAINERD = """
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  max_concurrent_downloads = 9
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
"""


def test_daemon_applies_containerd_config_on_top(tmp_path: Path) -> None:
    cni = tmp_path / "cni"
    cni.mkdir()
    ctrd = tmp_path / "containerd.toml"
    ctrd.write_text(CONTAINERD.replace("{cni}", str(cni)))
    own = '[images]\nmax_concurrent_downloads = 2\n[network]\ncni_conf_dir = "/nonexistent"\n'
    with Daemon(tmp_path / "d", own, extra_args=["--containerd-config", str(ctrd)]) as d:
        st = d.runtime.Status(pb.StatusRequest(verbose=True))
        effective = json.loads(st.info["config"])
    assert effective["images"]["max_concurrent_downloads"] == 9
    assert effective["network"]["cni_conf_dir"] == str(cni)
    log = d.log.read_text()
    assert log.count("SystemdCgroup not imported: podling uses cgroupfs") == 1


def test_daemon_refuses_a_version_1_containerd_config(tmp_path: Path) -> None:
    ctrd = tmp_path / "containerd.toml"
    ctrd.write_text('[plugins.cri]\nsandbox_image = "registry.k8s.io/pause:3.9"\n')
    d = Daemon(tmp_path / "d", "", extra_args=["--containerd-config", str(ctrd)])
    with pytest.raises(RuntimeError, match="containerd config migrate"):
        d.start()
    d.stop()

"""podling doctor's containerd-config check against config files in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from podling.config import Config
from podling.doctor import Finding, Host
from podling.doctor.containerd import check_containerd_config, table_layouts

CRI2 = 'plugins."io.containerd.grpc.v1.cri"'
IMAGES3 = 'plugins."io.containerd.cri.v1.images"'
RUNTIME3 = 'plugins."io.containerd.cri.v1.runtime"'

V2_BODY = f"""
[{CRI2}]
  sandbox_image = "registry.k8s.io/pause:3.9"
  max_container_log_line_size = 16384
  [{CRI2}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [{CRI2}.containerd.runtimes.runc.options]
      SystemdCgroup = true
"""

V3_BODY = f"""
[{IMAGES3}]
  snapshotter = "overlayfs"
[{RUNTIME3}.cni]
  conf_dir = "/etc/cni/net.d"
"""


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """Only containerd_config matters to this check; the rest points at nothing."""
    nothing = tmp_path / "nothing"
    return Host(
        proc=nothing,
        cgroup_root=nothing,
        kubelet_config=nothing,
        manifests=nothing,
        docker_root=nothing,
        which=lambda b: None,
        disk_free=lambda p: 0,
        podling_images=lambda: None,
        containerd_config=tmp_path / "config.toml",
        probe_image=None,
    )


def check(host: Host, text: str) -> list[Finding]:
    host.containerd_config.write_text(text)
    return check_containerd_config(host, Config())


def test_no_file_is_fine(host: Host) -> None:
    [f] = check_containerd_config(host, Config())
    assert f.level == "ok" and "no containerd config" in f.title


def test_v2_file_lists_the_keys_podling_ignores(host: Host) -> None:
    version, ignored = check(host, "version = 2\n" + V2_BODY)
    assert version.level == "ok" and "version 2 matches" in version.title
    assert ignored.level == "warning" and ignored.title.startswith("2 key(s)")
    assert f"{CRI2}.max_container_log_line_size" in ignored.title
    assert f"{CRI2}.containerd.runtimes.runc.options.SystemdCgroup" in ignored.title
    assert "podling uses cgroupfs" in ignored.why  # import_containerd's own reason
    assert f"podling config import {host.containerd_config} -o" in ignored.fix


def test_everything_mapped_is_ok(host: Host) -> None:
    findings = check(host, "version = 3\n" + V3_BODY)
    assert [f.level for f in findings] == ["ok", "ok"]
    assert "every set key maps" in findings[1].title


@pytest.mark.parametrize(
    ("header", "said", "fix"),
    [
        ("", "has no `version` line", "set `version = 2`"),
        ("version = 1\n", "says `version = 1`", "set `version = 2`"),
    ],
)
def test_v2_tables_without_version_2(host: Host, header: str, said: str, fix: str) -> None:
    version, importing = check(host, header + V2_BODY)
    assert version.level == "error" and said in version.title
    assert "laid out for version 2" in version.title and f"{CRI2}.containerd" in version.title
    assert fix in version.fix and str(host.containerd_config) in version.fix
    # podling refuses an unversioned file, and says how to convert one
    assert importing.level == "warning" and "containerd config migrate" in importing.why


def test_version_2_with_v3_tables(host: Host) -> None:
    version, ignored = check(host, "version = 2\n" + V3_BODY)
    assert version.level == "error"
    assert "laid out for version 3" in version.title and IMAGES3 in version.title
    assert version.fix.startswith("set `version = 3`")
    assert ignored.level == "ok"


def test_version_3_with_v2_tables(host: Host) -> None:
    [version, _] = check(host, "version = 3\n" + V2_BODY)
    assert version.level == "error" and version.fix.startswith("set `version = 2`")
    [mixed, _] = check(host, "version = 3\n" + V3_BODY + V2_BODY)
    assert mixed.level == "error" and "also has version 2 tables" in mixed.title
    assert "move the settings of" in mixed.fix and f"{CRI2}.sandbox_image" in mixed.fix


def test_v3_stream_settings_in_the_grpc_table_are_not_v2(host: Host) -> None:
    text = f'version = 3\n[{CRI2}]\nstream_server_port = "10010"\n' + V3_BODY
    assert [f.level for f in check(host, text)] == ["ok", "ok"]


def test_version_1_layout_is_consistent_but_not_importable(host: Host) -> None:
    version, importing = check(host, '[plugins.cri]\nsandbox_image = "pause:3.1"\n')
    assert version.level == "ok"
    assert importing.level == "warning" and "cannot import" in importing.title


def test_unknown_version_and_bad_toml(host: Host) -> None:
    [version, _] = check(host, "version = 4\n" + V3_BODY)
    assert version.level == "error" and "versions 1, 2 and 3" in version.title
    assert "set `version = 3`" in version.fix
    [bad] = check(host, "version = 2\n[plugins\n")
    assert bad.level == "error" and "not valid TOML" in bad.title


def test_table_layouts() -> None:
    assert table_layouts({}) == {}
    assert table_layouts({"plugins": {"cri": {}}}) == {1: ["plugins.cri"]}
    doc = {"plugins": {"io.containerd.grpc.v1.cri": {"registry": {}, "cni": {}}}}
    assert table_layouts(doc) == {2: [f"{CRI2}.cni", f"{CRI2}.registry"]}

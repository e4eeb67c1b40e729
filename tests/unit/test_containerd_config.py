"""containerd config (v2, v3) → podling TOML: the values land where podling reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podling import config as config_mod
from podling.containerd_config import ImportResult, import_containerd
from podling.containerd_values import parse_go_duration
from podling.errors import ConfigError

V2 = """
version = 2
root = "/var/lib/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.02
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  max_concurrent_downloads = 5
  stream_server_address = "127.0.0.1"
  stream_server_port = "10010"
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "crun"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
        BinaryName = ""
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "/usr/local/bin/crun"
        Root = "/run/crun-state"
        NoPivotRoot = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
      runtime_type = "io.containerd.kata.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
      endpoint = ["https://mirror.example.com", "http://10.0.0.5:5000",
                  "https://registry-1.docker.io"]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.local:5000"]
      endpoint = ["http://registry.local:5000"]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]
      endpoint = ["https://catchall.example.com"]
    [plugins."io.containerd.grpc.v1.cri".registry.configs."gcr.io".tls]
      insecure_skip_verify = true
"""

V3 = """
version = 3
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  max_concurrent_downloads = 7
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs}"
[plugins."io.containerd.cri.v1.runtime"]
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.fast]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.fast.options]
        BinaryName = "/opt/bin/crun"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin", "/usr/libexec/cni"]
    conf_dir = "/etc/cni/custom.d"
"""

DOCKER_HOSTS = """
server = "https://registry-1.docker.io"

[host."https://mirror-a.example.com"]
  capabilities = ["pull", "resolve"]

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."https://push-only.example.com"]
  capabilities = ["push"]
"""

PRIVATE_HOSTS = """
server = "https://replacement.example.com"
"""


def _load(tmp_path: Path, result: ImportResult) -> config_mod.Config:
    f = tmp_path / "podling.toml"
    f.write_text(result.toml)
    return config_mod.load(f, explicit=True)


def _reasons(result: ImportResult) -> dict[str, str]:
    return dict(result.unmapped)


def test_v2_maps_runtimes_images_network_streaming(tmp_path: Path) -> None:
    result = import_containerd(V2, tmp_path / "config.toml")
    cfg = _load(tmp_path, result)
    assert cfg.default_runtime == "crun"
    assert cfg.runtimes["runc"].binary == "runc"
    assert cfg.runtimes["runc"].type == "oci"
    assert cfg.runtimes["crun"].binary == "/usr/local/bin/crun"
    assert cfg.runtimes["crun"].root == "/run/crun-state"
    assert "kata" not in cfg.runtimes
    assert cfg.images.pinned == ["registry.k8s.io/pause:3.9"]
    assert cfg.images.max_concurrent_downloads == 5
    assert cfg.network.cni_bin_dirs == ["/opt/cni/bin"]
    assert cfg.network.cni_conf_dir == "/etc/cni/net.d"
    assert cfg.streaming.port == 10010
    assert cfg.images.snapshotter == "overlayfs"


def test_v2_inline_mirrors_keep_order_and_drop_upstream(tmp_path: Path) -> None:
    cfg = _load(tmp_path, import_containerd(V2, tmp_path / "config.toml"))
    hub = cfg.images.registries["docker.io"]
    assert hub.mirrors == ["https://mirror.example.com", "http://10.0.0.5:5000"]
    assert not hub.skip_upstream
    local = cfg.images.registries["registry.local:5000"]
    assert local.mirrors == [] and local.insecure
    assert "*" not in cfg.images.registries


def test_v2_reports_what_it_cannot_map(tmp_path: Path) -> None:
    reasons = _reasons(import_containerd(V2, tmp_path / "config.toml"))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    systemd = f"{cri}.containerd.runtimes.runc.options.SystemdCgroup"
    assert reasons[systemd] == "podling uses cgroupfs (systemd is not PID 1 here)"
    assert "io.containerd.kata.v2" in reasons[f"{cri}.containerd.runtimes.kata"]
    assert f"{cri}.containerd.runtimes.crun.options.NoPivotRoot" in reasons
    assert f"{cri}.max_container_log_line_size" in reasons
    assert f"{cri}.containerd.snapshotter" not in reasons  # mapped
    assert "wildcard" in reasons[f'{cri}.registry.mirrors."*".endpoint']
    assert f'{cri}.registry.configs."gcr.io".tls.insecure_skip_verify' in reasons
    assert 'plugins."io.containerd.gc.v1.scheduler"' in reasons
    assert "socket" in reasons["grpc"]
    assert "root" in reasons
    # off/empty values are not noise in the report
    assert f"{cri}.enable_selinux" not in reasons
    assert f"{cri}.containerd.runtimes.runc.options.BinaryName" not in reasons


def _certs(tmp_path: Path) -> Path:
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    (certs / "docker.io" / "hosts.toml").write_text(DOCKER_HOSTS)
    (certs / "private.example.com").mkdir()
    (certs / "private.example.com" / "hosts.toml").write_text(PRIVATE_HOSTS)
    (certs / "10.1.2.3_5000_").mkdir()
    (certs / "10.1.2.3_5000_" / "hosts.toml").write_text('server = "http://10.1.2.3:5000"\n')
    (certs / "_default").mkdir()
    (certs / "_default" / "hosts.toml").write_text('[host."https://any.example.com"]\n')
    return certs


def test_v3_maps_everything(tmp_path: Path) -> None:
    text = V3.replace("{certs}", str(_certs(tmp_path)))
    result = import_containerd(text, tmp_path / "config.toml")
    cfg = _load(tmp_path, result)
    assert cfg.default_runtime == "runc"
    assert cfg.runtimes["fast"].binary == "/opt/bin/crun"
    assert cfg.runtimes["runc"].binary == "runc"
    assert cfg.images.pinned == ["registry.k8s.io/pause:3.10"]
    assert cfg.images.max_concurrent_downloads == 7
    assert cfg.images.snapshotter == "native"
    assert cfg.network.cni_bin_dirs == ["/opt/cni/bin", "/usr/libexec/cni"]
    assert cfg.network.cni_conf_dir == "/etc/cni/custom.d"


def test_v3_hosts_toml_mirrors_in_order(tmp_path: Path) -> None:
    certs = _certs(tmp_path)
    result = import_containerd(V3.replace("{certs}", str(certs)), tmp_path / "config.toml")
    regs = _load(tmp_path, result).images.registries
    hub = regs["docker.io"]
    assert hub.mirrors == ["https://mirror-a.example.com", "http://127.0.0.1:5001"]
    assert not hub.skip_upstream and not hub.insecure
    private = regs["private.example.com"]
    assert private.mirrors == ["https://replacement.example.com"] and private.skip_upstream
    assert regs["10.1.2.3:5000"].insecure
    assert "_default" not in regs
    reasons = _reasons(result)
    docker_file = certs / "docker.io" / "hosts.toml"
    assert f'{docker_file}: host."http://127.0.0.1:5001".skip_verify' in reasons
    assert "podling only pulls" in reasons[f'{docker_file}: host."https://push-only.example.com"']
    assert str(certs / "_default" / "hosts.toml") in reasons
    runc = 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc'
    assert "cgroupfs" in reasons[f"{runc}.options.SystemdCgroup"]


def test_missing_hosts_dir_is_reported(tmp_path: Path) -> None:
    result = import_containerd(V3.replace("{certs}", str(tmp_path / "nope")), tmp_path / "c")
    assert any("no such directory" in why for _, why in result.unmapped)
    assert _load(tmp_path, result).images.registries == {}


def test_bad_hosts_toml_names_the_file(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    (certs / "docker.io" / "hosts.toml").write_text("server = \n")
    with pytest.raises(ConfigError, match=r"docker\.io/hosts\.toml"):
        import_containerd(V3.replace("{certs}", str(certs)), tmp_path / "config.toml")


@pytest.mark.parametrize("text", ["", "version = 1\n", '[plugins.cri]\nsandbox_image = "x"\n'])
def test_version_1_is_refused_with_the_migrate_command(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        import_containerd(text, tmp_path / "old.toml")
    msg = str(e.value)
    assert "containerd config migrate" in msg and "1.7" in msg and "old.toml" in msg


def test_unknown_version_and_garbage_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="version 4"):
        import_containerd("version = 4\n", tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML"):
        import_containerd("version = 2\n[plugins\n", tmp_path / "c.toml")


def test_default_runtime_naming_a_shim_is_not_mapped(tmp_path: Path) -> None:
    text = V2.replace('default_runtime_name = "crun"', 'default_runtime_name = "kata"')
    result = import_containerd(text, tmp_path / "c.toml")
    assert _load(tmp_path, result).default_runtime == "runc"  # podling's own default
    key = 'plugins."io.containerd.grpc.v1.cri".containerd.default_runtime_name'
    assert "not imported" in _reasons(result)[key]


def test_out_of_range_downloads_are_reported_not_mapped(tmp_path: Path) -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\nmax_concurrent_downloads = 500\n'
    result = import_containerd(text, tmp_path / "c.toml")
    assert _load(tmp_path, result).images.max_concurrent_downloads == 3
    assert (
        "1 to 64"
        in _reasons(result)['plugins."io.containerd.grpc.v1.cri".max_concurrent_downloads']
    )


def test_extra_toml_overrides_podling_config(tmp_path: Path) -> None:
    base = tmp_path / "podling.toml"
    base.write_text('default_runtime = "runsc"\n[images]\nmax_concurrent_downloads = 2\n')
    (tmp_path / "config.d").mkdir()
    (tmp_path / "config.d" / "10.toml").write_text('[network]\ncni_conf_dir = "/x"\n')
    imported = import_containerd(V2, tmp_path / "containerd.toml")
    cfg = config_mod.load(
        base, explicit=True, extra=((tmp_path / "containerd.toml", imported.toml),)
    )
    assert cfg.default_runtime == "crun"
    assert cfg.images.max_concurrent_downloads == 5
    assert cfg.network.cni_conf_dir == "/etc/cni/net.d"


def test_cli_import_prints_toml_and_reports_on_stderr(tmp_path: Path) -> None:
    src = tmp_path / "config.toml"
    src.write_text(V2)
    out = tmp_path / "50-containerd.toml"
    cmd = [sys.executable, "-m", "podling.cli.client", "config", "import", str(src)]
    shown = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"# Imported from the containerd config {src}")
    assert "SystemdCgroup: podling uses cgroupfs" in shown.stderr
    written = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert written.returncode == 0 and written.stdout == ""
    assert out.read_text() == shown.stdout
    assert config_mod.load(out, explicit=True).default_runtime == "crun"
    src.write_text("version = 1\n")
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "containerd config migrate" in refused.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4h0m0s", 14400),
        ("30s", 30),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("1h", 3600),
        ("1.5h", 5400),
        ("2h45m", 9900),
        ("100us", 1e-4),
        ("0", 0),
        ("-1m", -60),
    ],
)
def test_go_durations_parse(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "4 hours", "30", "1d", "h", "1m 30s", "1.2.3s", "s30"])
def test_invalid_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_go_duration(text)


def _cri2(body: str) -> str:
    return f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n{body}'


def test_durations_map_to_seconds(tmp_path: Path) -> None:
    text = _cri2('stream_idle_timeout = "4h30m0s"\nimage_pull_progress_timeout = "1m30s"\n')
    result = import_containerd(text, tmp_path / "c.toml")
    assert result.unmapped == []
    assert "stream_idle_timeout -> streaming.idle_timeout" in result.mapped[0]
    cfg = _load(tmp_path, result)
    assert cfg.streaming.idle_timeout == 16200
    assert cfg.images.pull_stall_timeout == 90
    half = _cri2('image_pull_progress_timeout = "2.5s"\n')
    assert _load(tmp_path, import_containerd(half, tmp_path / "c")).images.pull_stall_timeout == 2.5


def test_v3_pull_progress_timeout(tmp_path: Path) -> None:
    images = '[plugins."io.containerd.cri.v1.images"]'
    text = f'version = 3\n{images}\nimage_pull_progress_timeout = "5m0s"\n'
    cfg = _load(tmp_path, import_containerd(text, tmp_path / "c.toml"))
    assert cfg.images.pull_stall_timeout == 300


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ('"4 hours"', "'4 hours' is not a Go duration"),
        ('"48h"', "'48h' is 172800 seconds; podling allows 1 to 86400"),
        ('"500ms"', "'500ms' is 0.5 seconds"),
        ('"0s"', "'0s' turns the timeout off"),
        ('"-5m"', "'-5m' is negative"),
        ("14400", "14400 is not a Go duration string"),
    ],
)
def test_unmappable_durations_are_reported(tmp_path: Path, value: str, why: str) -> None:
    result = import_containerd(_cri2(f"stream_idle_timeout = {value}\n"), tmp_path / "c.toml")
    reasons = _reasons(result)
    reason = reasons['plugins."io.containerd.grpc.v1.cri".stream_idle_timeout']
    assert reason.startswith("not mapped to streaming.idle_timeout: ") and why in reason
    assert _load(tmp_path, result).streaming.idle_timeout == 14400.0  # podling's default

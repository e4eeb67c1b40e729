"""podling doctor's checks against fake host trees (no root, nothing real read)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from podling import doctor
from podling.config import Config, HandlerConfig, NetworkConfig, RuntimeConfig
from podling.doctor import Finding, Host
from podling.doctor.binaries import check_cni, check_runtime_binaries
from podling.doctor.docker import check_docker_images, docker_tags
from podling.doctor.kernel import (
    GIB,
    check_bridge_netfilter,
    check_cgroup_controllers,
    check_disk_space,
    check_ip_forward,
    check_overlayfs,
)
from podling.doctor.kubelet import check_cgroup_driver, check_runtime_endpoint
from podling.doctor.manifests import check_docker_socket, check_runtime_classes
from podling.doctor.sandbox import check_sandbox_image
from podling.errors import NotFound, PodlingError, Unauthenticated, Unavailable

BINARIES = {"conmon": "/usr/bin/conmon", "runc": "/usr/sbin/runc"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A healthy fake node: systemd not PID 1, overlay, v1 controllers, forwarding and
    br_netfilter on, conmon + runc installed, 50 GiB free, podlingd unreachable, no
    containerd config, every registry probe answered "the manifest exists"."""
    proc = tmp_path / "proc"
    write(proc / "1" / "comm", "tini\n")
    write(proc / "filesystems", "nodev\tsysfs\n\text4\nnodev\toverlay\n")
    write(proc / "sys/net/ipv4/ip_forward", "1\n")
    write(proc / "sys/net/bridge/bridge-nf-call-iptables", "1\n")
    cg = tmp_path / "cgroup"
    for c in ("cpu", "memory", "pids"):
        write(cg / c / "cgroup.procs", "")
    return Host(
        proc=proc,
        cgroup_root=cg,
        kubelet_config=tmp_path / "kubelet" / "config.yaml",
        manifests=tmp_path / "manifests",
        docker_root=tmp_path / "docker",
        which=BINARIES.get,
        disk_free=lambda p: 50 * GIB,
        podling_images=lambda: None,
        containerd_config=tmp_path / "containerd" / "config.toml",
        probe_image=lambda ref: None,
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    bin_dir = tmp_path / "cni-bin"
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        write(bin_dir / plugin, "")
    infra = write(tmp_path / "catatonit", "")
    return Config(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        socket="/run/podling/podling.sock",
        runtime=RuntimeConfig(infra_binary=str(infra)),
        network=NetworkConfig(cni_conf_dir=str(tmp_path / "net.d"), cni_bin_dirs=[str(bin_dir)]),
    )


def levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


def test_healthy_fake_node_has_no_errors_or_warnings(host: Host, cfg: Config) -> None:
    findings = doctor.run_checks(host, cfg)
    assert {f.check for f in findings} == set(doctor.CHECKS)
    assert [f for f in findings if f.level != "ok"] == []
    assert not doctor.has_errors(findings)


def test_kubelet_systemd_driver_is_an_error(host: Host, cfg: Config) -> None:
    write(host.kubelet_config, "kind: KubeletConfiguration\ncgroupDriver: systemd\n")
    kubelet, pid1 = check_cgroup_driver(host, cfg)
    assert kubelet.level == "error"
    assert "systemd" in kubelet.title
    assert "`cgroupDriver: cgroupfs`" in kubelet.fix and str(host.kubelet_config) in kubelet.fix
    assert pid1.level == "ok"
    assert doctor.has_errors(doctor.run_checks(host, cfg))


def test_kubelet_driver_default_and_missing_file(host: Host, cfg: Config) -> None:
    assert "no kubelet config" in check_cgroup_driver(host, cfg)[0].title
    write(host.kubelet_config, "kind: KubeletConfiguration\n")  # kubelet default: cgroupfs
    assert levels(check_cgroup_driver(host, cfg)) == ["ok", "ok"]


def test_systemd_as_pid1_is_a_warning(host: Host, cfg: Config) -> None:
    write(host.proc / "1" / "comm", "systemd\n")
    assert levels(check_cgroup_driver(host, cfg)) == ["ok", "warning"]


def test_runtime_endpoint(host: Host, cfg: Config) -> None:
    assert levels(check_runtime_endpoint(host, cfg)) == ["ok"]  # no kubelet config
    write(host.kubelet_config, "containerRuntimeEndpoint: unix:///var/run/podling/podling.sock\n")
    assert levels(check_runtime_endpoint(host, cfg)) == ["ok"]
    write(host.kubelet_config, "cgroupDriver: cgroupfs\n")  # kubelet default: containerd's
    [f] = check_runtime_endpoint(host, cfg)
    assert f.level == "error" and "containerd.sock" in f.title
    assert "containerRuntimeEndpoint: unix:///run/podling/podling.sock" in f.fix


def test_runtime_endpoint_flag_wins(host: Host, cfg: Config) -> None:
    write(host.kubelet_config, "containerRuntimeEndpoint: unix:///run/podling/podling.sock\n")
    env = host.kubelet_config.parent / "kubeadm-flags.env"
    write(env, 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/crio/crio.sock"\n')
    [f] = check_runtime_endpoint(host, cfg)
    assert f.level == "error" and "crio.sock" in f.title and str(env) in f.title
    assert f.fix.startswith("set --container-runtime-endpoint=unix:///run/podling/podling.sock")


def test_docker_sock_reference_in_a_manifest(host: Host, cfg: Config) -> None:
    write(host.manifests / "clean.yaml", "kind: Pod\nmetadata: {name: a}\n")
    bad = write(
        host.manifests / "agents" / "logs.yml",
        "kind: DaemonSet\nspec:\n  volumes:\n  - hostPath:\n      path: /var/run/docker.sock\n",
    )
    [f] = check_docker_socket(host, cfg)
    assert f.level == "warning"
    assert str(bad) in f.title and "line 5" in f.title
    assert "unix:///run/podling/podling.sock" in f.fix


def test_run_docker_sock_also_found(host: Host, cfg: Config) -> None:
    write(host.manifests / "ci.yaml", "path: /run/docker.sock\n")
    assert levels(check_docker_socket(host, cfg)) == ["warning"]


def test_missing_br_netfilter(host: Host, cfg: Config) -> None:
    (host.proc / "sys/net/bridge/bridge-nf-call-iptables").unlink()
    [f] = check_bridge_netfilter(host, cfg)
    assert f.level == "error" and "modprobe br_netfilter" in f.fix
    write(host.proc / "sys/net/bridge/bridge-nf-call-iptables", "0\n")
    [f] = check_bridge_netfilter(host, cfg)
    assert f.level == "warning" and "bridge-nf-call-iptables=1" in f.fix


def test_ip_forward_off(host: Host, cfg: Config) -> None:
    write(host.proc / "sys/net/ipv4/ip_forward", "0\n")
    [f] = check_ip_forward(host, cfg)
    assert f.level == "warning" and "net.ipv4.ip_forward=1" in f.fix


def test_no_overlay(host: Host, cfg: Config) -> None:
    write(host.proc / "filesystems", "nodev\tsysfs\n\text4\n")
    [f] = check_overlayfs(host, cfg)
    assert f.level == "warning" and "modprobe overlay" in f.fix


def test_cgroup_controllers_v1_and_v2(host: Host, cfg: Config) -> None:
    (host.cgroup_root / "pids" / "cgroup.procs").unlink()
    [f] = check_cgroup_controllers(host, cfg)
    assert f.level == "error" and f.title.endswith(": pids")
    write(host.cgroup_root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    assert levels(check_cgroup_controllers(host, cfg)) == ["ok"]


@pytest.mark.parametrize(("gib", "level"), [(0.5, "error"), (3, "warning"), (5, "ok")])
def test_low_disk(host: Host, cfg: Config, gib: float, level: str) -> None:
    host = dataclasses.replace(host, disk_free=lambda p: int(gib * GIB))
    findings = check_disk_space(host, cfg)
    assert levels(findings) == [level, level]
    assert cfg.root in findings[0].title and cfg.state in findings[1].title


def test_runtime_class_naming_an_unconfigured_handler(host: Host, cfg: Config) -> None:
    write(
        host.manifests / "rc.yaml",
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: secure}\n"
        "handler: kata\n---\nkind: RuntimeClass\nmetadata: {name: default}\nhandler: runc\n"
        "---\nkind: RuntimeClass\nmetadata: {name: fast}\nhandler: crun\n",
    )
    findings = {f.title.split()[1].rstrip(":"): f for f in check_runtime_classes(host, cfg)}
    assert findings["default"].level == "ok"
    assert findings["secure"].level == "error"
    assert "[runtimes.kata]" in findings["secure"].fix
    assert findings["fast"].level == "error"  # built in, but crun is not installed here
    assert "install crun" in findings["fast"].fix
    cfg = dataclasses.replace(cfg, runtimes={"kata": HandlerConfig(binary="kata-runtime")})
    by_name = {f.title.split()[1].rstrip(":"): f.level for f in check_runtime_classes(host, cfg)}
    assert by_name["secure"] == "ok"


def test_configured_handler_binary_missing(host: Host, cfg: Config) -> None:
    cfg = dataclasses.replace(cfg, runtimes={"kata": HandlerConfig(binary="kata-runtime")})
    findings = check_runtime_binaries(host, cfg)
    bad = [f for f in findings if f.level != "ok"]
    assert len(bad) == 1 and "kata-runtime" in bad[0].title
    host = dataclasses.replace(host, which=lambda b: None)
    titles = [f.title for f in check_runtime_binaries(host, cfg) if f.level == "error"]
    assert titles[0].startswith("conmon") and "default runtime handler runc" in titles[1]


def test_cni_default_network_and_missing_plugin(host: Host, cfg: Config, tmp_path: Path) -> None:
    [f] = check_cni(host, cfg)
    assert f.level == "ok" and "default network" in f.title
    (tmp_path / "cni-bin" / "portmap").unlink()
    [f] = check_cni(host, cfg)
    assert f.level == "error" and f.title.endswith(": portmap")


def test_cni_conflist_is_read(host: Host, cfg: Config) -> None:
    conf = {"cniVersion": "1.0.0", "name": "calico", "plugins": [{"type": "calico"}]}
    write(Path(cfg.network.cni_conf_dir) / "10-calico.conflist", json.dumps(conf))
    [f] = check_cni(host, cfg)
    assert f.level == "error" and "'calico'" in f.title and f.title.endswith(": calico")
    write(Path(cfg.network.cni_conf_dir) / "00-bad.conf", "{")
    [f] = check_cni(host, cfg)
    assert f.level == "error" and "00-bad.conf" in f.title


REPOSITORIES = {
    "Repositories": {
        "busybox": {
            "busybox:latest": "sha256:" + "a" * 64,
            "busybox@sha256:" + "b" * 64: "sha256:" + "a" * 64,
        },
        "myreg:5000/team/app": {"myreg:5000/team/app:1.2": "sha256:" + "c" * 64},
    }
}


def test_docker_repositories_with_tags(host: Host, cfg: Config) -> None:
    write(host.docker_root / "image/overlay2/repositories.json", json.dumps(REPOSITORIES))
    [f] = check_docker_images(host, cfg)  # podlingd not reachable: all listed
    assert f.level == "warning"
    assert "busybox:latest" in f.title and "myreg:5000/team/app:1.2" in f.title
    assert "could not be asked" in f.title
    assert "podling load" in f.fix and "migrate docker` does not exist yet" in f.fix
    host = dataclasses.replace(host, podling_images=lambda: ["docker.io/library/busybox:latest"])
    [f] = check_docker_images(host, cfg)
    assert f.title.startswith("1 Docker image tag") and "busybox" not in f.title
    both = ["docker.io/library/busybox:latest", "myreg:5000/team/app:1.2"]
    host = dataclasses.replace(host, podling_images=lambda: both)
    assert levels(check_docker_images(host, cfg)) == ["ok"]


def test_docker_tags_ignores_digests_and_garbage() -> None:
    assert docker_tags(json.dumps(REPOSITORIES)) == ["busybox:latest", "myreg:5000/team/app:1.2"]
    assert docker_tags("not json") == []
    assert docker_tags('{"Repositories": []}') == []


PAUSE = "registry.k8s.io/pause:3.9"


def kubeadm_flags(host: Host, image: str) -> Path:
    env = host.kubelet_config.parent / "kubeadm-flags.env"
    return write(env, f'KUBELET_KUBEADM_ARGS="--pod-infra-container-image={image}"\n')


def pinned(cfg: Config, *refs: str) -> Config:
    return dataclasses.replace(cfg, images=dataclasses.replace(cfg.images, pinned=list(refs)))


def test_no_sandbox_image_is_fine(host: Host, cfg: Config) -> None:
    [f] = check_sandbox_image(host, cfg)
    assert f.level == "ok" and "needs none" in f.title


def test_sandbox_image_pinned_and_pullable(host: Host, cfg: Config) -> None:
    env = kubeadm_flags(host, PAUSE)
    asked: list[str] = []

    def probe(ref: str) -> PodlingError | None:
        asked.append(ref)
        return None

    host = dataclasses.replace(host, podling_images=lambda: [PAUSE], probe_image=probe)
    about, pin, pull = check_sandbox_image(host, pinned(cfg, "registry.k8s.io/pause:3.9"))
    assert levels([about, pin, pull]) == ["ok", "ok", "ok"]
    assert "not needed" in about.title and "present locally" in about.title
    assert str(env) in about.title
    assert "is pinned" in pin.title
    assert "pullable" in pull.title and asked == [PAUSE]


def test_unpinned_sandbox_image_gets_the_toml_line(host: Host, cfg: Config) -> None:
    kubeadm_flags(host, PAUSE)
    [_, pin, _] = check_sandbox_image(host, pinned(cfg, "docker.io/library/busybox:1.36"))
    assert pin.level == "warning" and "not pinned" in pin.title
    # the whole list, since a drop-in replaces it
    assert 'pinned = ["docker.io/library/busybox:1.36", "registry.k8s.io/pause:3.9"]' in pin.fix
    assert "[images]" in pin.fix


def test_pinned_match_is_by_normalised_name(host: Host, cfg: Config) -> None:
    write(host.kubelet_config, "podInfraContainerImage: pause:3.9\n")
    [_, pin, _] = check_sandbox_image(host, pinned(cfg, "docker.io/library/pause:3.9"))
    assert pin.level == "ok"


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (NotFound("image registry.k8s.io/pause:3.9 not found: HTTP 404"), "correct the name"),
        (
            Unavailable("pulling image failed: cannot connect"),
            '[images.registries."registry.k8s.io"] mirrors = [',
        ),
        (Unauthenticated("requires credentials"), "podling load"),
    ],
)
def test_unpullable_sandbox_image(host: Host, cfg: Config, error: PodlingError, fix: str) -> None:
    kubeadm_flags(host, PAUSE)
    host = dataclasses.replace(host, probe_image=lambda ref: error)
    [_, _, pull] = check_sandbox_image(host, pinned(cfg, PAUSE))
    assert pull.level == "warning" and "not pullable" in pull.title
    assert error.message in pull.title and fix in pull.fix


def test_offline_does_not_probe(host: Host, cfg: Config) -> None:
    kubeadm_flags(host, PAUSE)
    host = dataclasses.replace(host, probe_image=None)
    [_, _, pull] = check_sandbox_image(host, pinned(cfg, PAUSE))
    assert pull.level == "ok" and "not asked" in pull.title


def test_sandbox_image_from_containerd_config(host: Host, cfg: Config) -> None:
    write(
        host.containerd_config,
        'version = 3\n[plugins."io.containerd.cri.v1.images".pinned_images]\n'
        'sandbox = "registry.k8s.io/pause:3.10"\n',
    )
    [about, pin, _] = check_sandbox_image(host, cfg)
    assert "pause:3.10" in about.title and str(host.containerd_config) in about.title
    assert pin.level == "warning"
    write(host.kubelet_config, "podInfraContainerImage: registry.k8s.io/pause:3.9\n")
    [about, _, _] = check_sandbox_image(host, cfg)  # the kubelet's wins
    assert "pause:3.9 " in about.title and str(host.kubelet_config) in about.title


def test_unparsable_sandbox_image(host: Host, cfg: Config) -> None:
    kubeadm_flags(host, "Registry/UPPER:tag")
    [f] = check_sandbox_image(host, cfg)
    assert f.level == "warning" and "not a valid image reference" in f.title


def test_sandbox_image_probe_stays_out_of_startup_checks() -> None:
    assert "sandbox-image" not in doctor.STARTUP_CHECKS
    assert "containerd-config" not in doctor.STARTUP_CHECKS


def test_a_crashing_check_becomes_an_error(
    host: Host, cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(h: Host, c: Config) -> list[Finding]:
        raise OSError("disk on fire")

    monkeypatch.setitem(doctor.CHECKS, "overlayfs", boom)
    findings = doctor.run_checks(host, cfg)
    [f] = [f for f in findings if f.check == "overlayfs"]
    assert f.level == "error" and "disk on fire" in f.title
    assert len({f.check for f in findings}) == len(doctor.CHECKS)

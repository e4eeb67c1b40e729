"""`podling doctor` as an operator runs it, on this real machine, against a temp config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from podling import doctor
from tests.support.images import build_image, layer, push_image
from tests.support.registry import RegistryServer

PODLING = str(Path(sys.executable).parent / "podling")


def run_doctor(
    tmp_path: Path, *extra: str, config_extra: str = ""
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "podling" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        f'root = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        f'socket = "{tmp_path}/state/podling.sock"\n'
        f'[network]\ncni_conf_dir = "{tmp_path}/net.d"\n{config_extra}'
    )
    args = [
        PODLING,
        "doctor",
        "--config",
        str(config),
        "--kubelet-config",
        str(tmp_path / "kubelet" / "config.yaml"),
        "--manifests",
        str(tmp_path / "manifests"),
        "--docker-root",
        str(tmp_path / "docker"),
        "--containerd-config",
        str(tmp_path / "containerd" / "config.toml"),
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def parse(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    findings = json.loads(proc.stdout)
    assert isinstance(findings, list) and findings
    for f in findings:
        assert set(f) == {"level", "check", "title", "why", "fix"}
        assert f["level"] in doctor.LEVELS
        assert (f["why"] == "" and f["fix"] == "") == (f["level"] == "ok")
    expected = 1 if any(f["level"] == "error" for f in findings) else 0
    assert proc.returncode == expected, proc.stderr
    return findings


def test_json_on_this_machine(tmp_path: Path) -> None:
    proc = run_doctor(tmp_path, "-o", "json")
    findings = parse(proc)
    assert {f["check"] for f in findings} == set(doctor.CHECKS)
    # an empty conf dir: podling's default network will be written, nothing is yet
    cni = [f for f in findings if f["check"] == "cni"]
    assert "default network" in cni[0]["title"]
    assert not (tmp_path / "net.d").exists() and not (tmp_path / "root").exists()


def test_kubelet_problems_make_it_fail(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet" / "config.yaml"
    kubelet.parent.mkdir()
    kubelet.write_text(
        "kind: KubeletConfiguration\ncgroupDriver: systemd\n"
        "containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n"
    )
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "agent.yaml").write_text("hostPath:\n  path: /var/run/docker.sock\n")
    findings = parse(run_doctor(tmp_path, "-o", "json"))
    by_check = {(f["check"], f["level"]) for f in findings}
    assert {("cgroup-driver", "error"), ("runtime-endpoint", "error")} <= by_check
    assert ("docker-socket", "warning") in by_check
    table = run_doctor(tmp_path)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["LEVEL", "CHECK", "FINDING"]
    assert any("fix: set `cgroupDriver: cgroupfs`" in line for line in lines)
    assert "error(s)" in lines[-1]


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    proc = subprocess.run(
        [PODLING, "doctor", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "unknown key 'nonsense'" in proc.stderr


def sandbox_findings(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [f for f in parse(proc) if f["check"] == "sandbox-image"]


def test_sandbox_image_pullable_and_pinned(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet" / "config.yaml"
    kubelet.parent.mkdir()
    with RegistryServer(tmp_path / "registry") as reg:
        push_image(reg.url, "pd7-pause", "3.9", build_image([layer({"pause": b"#!\n"})]))
        image = f"{reg.host}/pd7-pause:3.9"
        insecure = f'[images.registries."{reg.host}"]\ninsecure = true\n'
        kubelet.write_text(f"cgroupDriver: cgroupfs\npodInfraContainerImage: {image}\n")
        pinned = f'[images]\npinned = ["{image}"]\n'
        about, pin, pull = sandbox_findings(
            run_doctor(tmp_path, "-o", "json", config_extra=pinned + insecure)
        )
        assert [about["level"], pin["level"], pull["level"]] == ["ok", "ok", "ok"]
        assert image in about["title"] and "is pinned" in pin["title"]
        assert "pullable" in pull["title"]

        missing = f"{reg.host}/pd7-pause:missing"
        kubelet.write_text(f"podInfraContainerImage: {missing}\n")
        _, pin, pull = sandbox_findings(
            run_doctor(tmp_path, "-o", "json", config_extra=pinned + insecure)
        )
        assert pin["level"] == "warning"
        assert f'pinned = ["{image}", "{missing}"]' in pin["fix"]
        assert pull["level"] == "warning" and "not found" in pull["title"]
        assert "correct the name or tag" in pull["fix"]

        # without `insecure` podling would speak https to it, as a pull would
        _, _, pull = sandbox_findings(run_doctor(tmp_path, "-o", "json", config_extra=pinned))
        assert pull["level"] == "warning" and "https://" in pull["title"]
        assert f'[images.registries."{reg.host}"]' in pull["fix"]

        _, _, pull = sandbox_findings(run_doctor(tmp_path, "--offline", "-o", "json"))
        assert pull["level"] == "ok" and "not asked" in pull["title"]


def test_containerd_config_with_the_wrong_version(tmp_path: Path) -> None:
    containerd = tmp_path / "containerd" / "config.toml"
    containerd.parent.mkdir()
    containerd.write_text(
        '[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "runc"\n'
    )
    findings = [
        f for f in parse(run_doctor(tmp_path, "-o", "json")) if f["check"] == "containerd-config"
    ]
    assert [f["level"] for f in findings] == ["error", "warning"]
    assert "has no `version` line" in findings[0]["title"]
    table = run_doctor(tmp_path)
    assert table.returncode == 1
    assert f"fix: set `version = 2` on the first line of {containerd}" in table.stdout
    containerd.write_text("version = 2\n" + containerd.read_text() + '[debug]\nlevel = "info"\n')
    findings = [
        f for f in parse(run_doctor(tmp_path, "-o", "json")) if f["check"] == "containerd-config"
    ]
    assert [f["level"] for f in findings] == ["ok", "warning"]
    assert "1 key(s)" in findings[1]["title"] and "debug" in findings[1]["title"]

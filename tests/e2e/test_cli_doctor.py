"""`podling doctor` as an operator runs it, on this real machine, against a temp config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from podling import doctor

PODLING = str(Path(sys.executable).parent / "podling")


def run_doctor(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "podling" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        f'root = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        f'socket = "{tmp_path}/state/podling.sock"\n'
        f'[network]\ncni_conf_dir = "{tmp_path}/net.d"\n'
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

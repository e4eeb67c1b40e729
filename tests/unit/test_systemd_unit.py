"""contrib/podlingd.service: systemd accepts it, and it says what podling relies on.

`systemd-analyze verify` works without systemd as PID 1. It exits 0 even for unknown keys
or unparsable values (it only warns on stderr), so the test fails on any stderr line that
names the unit; a deliberately broken copy proves those warnings are seen. The ExecStart
binary must exist for verify to pass, so the copy points it at this venv's podlingd.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "podlingd.service"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
PODLINGD = Path(sys.executable).parent / "podlingd"

needs_analyze = pytest.mark.skipif(
    not Path(ANALYZE).exists(), reason="systemd-analyze is not installed (package systemd)"
)


def service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def verify(tmp_path: Path, text: str) -> list[str]:
    """The stderr lines of `systemd-analyze verify` naming the unit (its warnings)."""
    unit = tmp_path / "podlingd.service"
    exec_start = service_section()["ExecStart"]
    unit.write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={PODLINGD}"))
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if unit.name in line]


@needs_analyze
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert PODLINGD.exists(), "the venv's podlingd entry point is missing: pip install -e ."
    assert verify(tmp_path, UNIT.read_text()) == []


@needs_analyze
def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("KillMode=process", "KillMode=procss\nRestartz=always")
    warnings = verify(tmp_path, broken)
    assert any("kill mode" in w for w in warnings), warnings
    assert any("Restartz" in w for w in warnings), warnings


def test_unit_runs_podlingd_and_spares_conmon() -> None:
    service = service_section()
    # the console script pyproject installs, under whatever prefix
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["podlingd"] == "podling.cli.daemon:main"
    assert Path(service["ExecStart"].split()[0]).name == "podlingd"
    # conmon and the containers survive a restart of podlingd
    assert service["KillMode"] == "process"
    assert service["Delegate"] == "yes"

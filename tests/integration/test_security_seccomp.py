"""seccomp (RuntimeDefault, Unconfined, Localhost under [runtime] seccomp_profile_root)
and AppArmor on each runtime handler, checked from inside the container, and every
refusal. A blocked syscall is checked in the container's own process (every handler)
and in an ExecSync process (runsc does not confine those: see docs/handlers.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.pod_fixtures import PodEnv
from tests.integration.security_pods import (  # noqa: F401 - the fixtures
    RUNTIME_DEFAULT,
    UNCONFINED,
    Pod,
    groups_image_fixture,
    handler_fixture,
    localhost,
    pod_fixture,
)

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plsecC0", "10.93.20.0/24"
NO_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}
# run by the container's own process: the exit codes of a user namespace and a mkdir
PROBE = (
    "{ unshare -U true; echo $?; mkdir /tmp/d; echo $?; } >/tmp/r.new 2>/dev/null; "
    "mv /tmp/r.new /tmp/r"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodEnv]:
    """The module's daemon, with relative Localhost profiles read from <base>/seccomp."""
    base = tmp_path_factory.mktemp("pods")
    (base / "seccomp" / "profiles").mkdir(parents=True)
    (base / "seccomp" / "profiles" / "no-mkdir.json").write_text(json.dumps(NO_MKDIR))
    extra = f'seccomp_profile_root = "{base / "seccomp"}"\n'
    with PodEnv(base, BRIDGE, SUBNET, extra) as e:
        yield e


def test_seccomp_profiles(pod: Pod, env: PodEnv) -> None:
    # a user namespace needs no capability, but the default profile allows unshare
    # only with CAP_SYS_ADMIN: "unshare exit code, mkdir exit code"
    confined = pod.run(init=PROBE, seccomp=RUNTIME_DEFAULT)
    assert pod.wait_file(confined, "/tmp/r") == "1\n0"
    free = pod.run(init=PROBE, seccomp=UNCONFINED)
    assert pod.wait_file(free, "/tmp/r") == "0\n0"
    # CRI: seccomp is not applied to privileged containers
    privileged = pod.run(init=PROBE, privileged=True, seccomp=RUNTIME_DEFAULT)
    assert pod.wait_file(privileged, "/tmp/r") == "0\n0"
    # a relative ref: read from [runtime] seccomp_profile_root
    no_mkdir = pod.run(init=PROBE, seccomp=localhost("profiles/no-mkdir.json"))
    assert pod.wait_file(no_mkdir, "/tmp/r") == "0\n1"
    if pod.gvisor:
        # runsc confines the container's processes only, not those of runsc exec, and
        # its /proc/self/status reports no seccomp mode
        assert pod.sh(confined, "unshare -U true").exit_code == 0
        assert pod.sh(no_mkdir, "mkdir /tmp/x").exit_code == 0
        assert pod.status_field(confined, "Seccomp") == "0"
        return
    assert pod.status_field(confined, "Seccomp") == "2"
    blocked = pod.sh(confined, "unshare -U true")
    assert blocked.exit_code != 0 and b"Operation not permitted" in blocked.stderr
    assert pod.status_field(free, "Seccomp") == "0"
    assert pod.sh(free, "unshare -U true").exit_code == 0
    assert pod.status_field(privileged, "Seccomp") == "0"
    assert pod.status_field(no_mkdir, "Seccomp") == "2"
    r = pod.sh(no_mkdir, "mkdir /tmp/x")
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr
    assert pod.sh(no_mkdir, "touch /tmp/y").exit_code == 0  # only mkdir is blocked
    # an absolute ref is used as given
    absolute = pod.run(seccomp=localhost(str(env.base / "seccomp/profiles/no-mkdir.json")))
    assert pod.sh(absolute, "mkdir /tmp/x").exit_code != 0


def test_seccomp_and_apparmor_refusals(pod: Pod, env: PodEnv, tmp_path: Path) -> None:
    root = env.base / "seccomp"
    missing = pod.refuse(seccomp=localhost("profiles/missing.json"))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"seccomp profile {root}/profiles/missing.json does not exist" in missing.details()
    escape = pod.refuse(seccomp=localhost("../secret.json"))
    assert escape.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        f"seccomp localhost_ref '../secret.json' leaves the profile root {root} "
        "([runtime] seccomp_profile_root)" in escape.details()
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    invalid = pod.refuse(seccomp=localhost(str(bad)))
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"seccomp profile {bad} is not valid JSON" in invalid.details()
    aa = pod.refuse(apparmor=localhost("my-profile"))
    assert aa.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AppArmor is not enabled on this node; cannot apply profile 'my-profile'" in aa.details()
    # RuntimeDefault AppArmor on a node without AppArmor: runs unconfined, not refused
    cid = pod.run(apparmor=RUNTIME_DEFAULT)
    assert pod.out(cid, "cat /proc/self/attr/current 2>/dev/null || echo none") in (
        "unconfined",
        "none",
    )

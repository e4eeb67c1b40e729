"""build_spec: capabilities, masked paths, seccomp, AppArmor, resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from podling.runtimes.spec_security import ALL_CAPABILITIES, DEFAULT_CAPABILITIES
from tests.unit.test_spec_support import build, make_config, make_host

DEFAULT = set(DEFAULT_CAPABILITIES)
ALL = set(ALL_CAPABILITIES)

# ---- capabilities ----------------------------------------------------------------------

CAP_CASES: list[tuple[list[str], list[str], bool, set[str]]] = [
    ([], [], False, DEFAULT),
    (["NET_ADMIN"], [], False, DEFAULT | {"CAP_NET_ADMIN"}),
    (["cap_sys_time"], [], False, DEFAULT | {"CAP_SYS_TIME"}),
    ([], ["CHOWN", "CAP_KILL"], False, DEFAULT - {"CAP_CHOWN", "CAP_KILL"}),
    ([], ["ALL"], False, set()),
    (["NET_BIND_SERVICE"], ["ALL"], False, {"CAP_NET_BIND_SERVICE"}),
    (["CHOWN"], ["CHOWN"], False, DEFAULT),  # add wins over drop
    (["ALL"], [], False, ALL),
    (["ALL"], ["SYS_ADMIN"], False, ALL - {"CAP_SYS_ADMIN"}),
    ([], [], True, ALL),
    ([], ["ALL"], True, ALL),  # privileged: all capabilities
]


@pytest.mark.parametrize(("add", "drop", "privileged", "expected"), CAP_CASES)
def test_capabilities(
    tmp_path: Path, add: list[str], drop: list[str], privileged: bool, expected: set[str]
) -> None:
    caps = pb.Capability(add_capabilities=add, drop_capabilities=drop)
    config = make_config(sc={"capabilities": caps, "privileged": privileged})
    sets = build(tmp_path, config).spec["process"]["capabilities"]
    assert set(sets["bounding"]) == expected
    assert sets["bounding"] == sets["effective"] == sets["permitted"]
    assert sets["bounding"] == [c for c in ALL_CAPABILITIES if c in expected]  # kernel order
    assert sets["inheritable"] == sets["ambient"] == []


def test_ambient_capabilities(tmp_path: Path) -> None:
    caps = pb.Capability(add_ambient_capabilities=["NET_ADMIN"])
    sets = build(tmp_path, make_config(sc={"capabilities": caps})).spec["process"]["capabilities"]
    assert "CAP_NET_ADMIN" in sets["effective"]
    assert sets["ambient"] == sets["inheritable"] == ["CAP_NET_ADMIN"]


def test_unknown_capability(tmp_path: Path) -> None:
    caps = pb.Capability(add_capabilities=["FLY"])
    with pytest.raises(
        InvalidArgument, match=r"capabilities\.add_capabilities: unknown capability 'FLY'"
    ):
        build(tmp_path, make_config(sc={"capabilities": caps}))


def test_node_capabilities_cap_the_result(tmp_path: Path) -> None:
    node = frozenset(ALL - {"CAP_SYS_RESOURCE"})
    host = make_host(capabilities=node)
    sets = build(tmp_path, make_config(sc={"privileged": True}), host=host).spec["process"][
        "capabilities"
    ]
    assert set(sets["bounding"]) == node
    add_all = pb.Capability(add_capabilities=["ALL"])
    sets = build(tmp_path, make_config(sc={"capabilities": add_all}), host=host).spec["process"][
        "capabilities"
    ]
    assert "CAP_SYS_RESOURCE" not in sets["bounding"]
    explicit = pb.Capability(add_capabilities=["SYS_RESOURCE"])
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE are not available"):
        build(tmp_path, make_config(sc={"capabilities": explicit}), host=host)


def test_no_new_privileges(tmp_path: Path) -> None:
    assert build(tmp_path).spec["process"]["noNewPrivileges"] is False
    spec = build(tmp_path, make_config(sc={"no_new_privs": True})).spec
    assert spec["process"]["noNewPrivileges"] is True


# ---- masked / read-only paths ----------------------------------------------------------


def test_default_masked_paths(tmp_path: Path) -> None:
    linux = build(tmp_path).spec["linux"]
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/acpi"} <= set(
        linux["maskedPaths"]
    )
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq"} == set(
        linux["readonlyPaths"]
    )


def test_cri_masked_paths(tmp_path: Path) -> None:
    config = make_config(sc={"masked_paths": ["/proc/x"], "readonly_paths": ["/proc/y"]})
    linux = build(tmp_path, config).spec["linux"]
    assert linux["maskedPaths"] == ["/proc/x"]
    assert linux["readonlyPaths"] == ["/proc/y"]


def test_privileged_has_no_masked_paths(tmp_path: Path) -> None:
    config = make_config(sc={"privileged": True, "masked_paths": ["/proc/x"]})
    linux = build(tmp_path, config).spec["linux"]
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []


# ---- seccomp ---------------------------------------------------------------------------

RD = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
UNCONFINED = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)


def _seccomp(tmp_path: Path, **sc: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None = build(tmp_path, make_config(sc=sc)).spec["linux"].get("seccomp")
    return result


def _allowed(profile: dict[str, Any]) -> set[str]:
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }


@pytest.mark.parametrize(
    "sc",
    [
        {},
        {"seccomp": UNCONFINED},
        {"seccomp_profile_path": "unconfined"},
        {"seccomp_profile_path": ""},
    ],
)
def test_no_seccomp(tmp_path: Path, sc: dict[str, Any]) -> None:
    assert _seccomp(tmp_path, **sc) is None


@pytest.mark.parametrize("sc", [{"seccomp": RD}, {"seccomp_profile_path": "runtime/default"}])
def test_runtime_default_seccomp(tmp_path: Path, sc: dict[str, Any]) -> None:
    profile = _seccomp(tmp_path, **sc)
    assert profile is not None
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _allowed(profile)
    assert {"read", "write", "execve", "openat", "clone", "socket", "wait4", "exit_group"} - {
        "clone"
    } <= allowed
    assert (
        not {"mount", "unshare", "setns", "pivot_root", "reboot", "init_module", "keyctl"} & allowed
    )
    clone = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone[0]["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    clone3 = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert clone3[0] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_runtime_default_follows_capabilities(tmp_path: Path) -> None:
    caps = pb.Capability(add_capabilities=["SYS_ADMIN", "SYS_TIME"])
    profile = _seccomp(tmp_path, seccomp=RD, capabilities=caps)
    assert profile is not None
    assert {"mount", "unshare", "setns", "clone", "clone3", "settimeofday"} <= _allowed(profile)


def test_runtime_default_on_arm(tmp_path: Path) -> None:
    host = make_host(machine="aarch64")
    profile = build(tmp_path, make_config(sc={"seccomp": RD}), host=host).spec["linux"]["seccomp"]
    assert profile["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def test_privileged_ignores_runtime_default(tmp_path: Path) -> None:
    assert _seccomp(tmp_path, seccomp=RD, privileged=True) is None


DOCKER_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"name": "getpid", "action": "SCMP_ACT_ALLOW"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {
            "names": ["chown"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "excludes": {"caps": ["CAP_CHOWN"]},
        },
    ],
}


def _localhost(tmp_path: Path, data: object, privileged: bool = False) -> dict[str, Any]:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    prof = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(path))
    profile = _seccomp(tmp_path, seccomp=prof, privileged=privileged)
    assert profile is not None
    return profile


def test_localhost_docker_format(tmp_path: Path) -> None:
    profile = _localhost(tmp_path, DOCKER_PROFILE)
    assert profile == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
        ],
    }


def test_localhost_oci_format_and_privileged(tmp_path: Path) -> None:
    oci = {
        "defaultAction": "SCMP_ACT_LOG",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    assert _localhost(tmp_path, oci, privileged=True) == oci  # asked for explicitly: applied


def test_localhost_legacy_path(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    profile = _seccomp(tmp_path, seccomp_profile_path=f"localhost/{path}")
    assert profile == {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [], "syscalls": []}


@pytest.mark.parametrize(
    ("content", "ref", "match"),
    [
        (
            None,
            "/nonexistent/profile.json",
            "seccomp profile /nonexistent/profile.json does not exist",
        ),
        ("{not json", None, "not valid JSON"),
        ("[]", None, "JSON object"),
        ('{"syscalls": []}', None, "defaultAction"),
        (None, "relative.json", "absolute"),
    ],
)
def test_localhost_errors(tmp_path: Path, content: str | None, ref: str | None, match: str) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    prof = pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=ref or str(path)
    )
    with pytest.raises(InvalidArgument, match=match):
        _seccomp(tmp_path, seccomp=prof)


def test_bad_legacy_seccomp_string(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="seccomp_profile_path"):
        _seccomp(tmp_path, seccomp_profile_path="whatever")


# ---- AppArmor --------------------------------------------------------------------------


def _apparmor(tmp_path: Path, apparmor_on: bool, **sc: Any) -> tuple[str | None, list[str]]:
    result = build(tmp_path, make_config(sc=sc), host=make_host(apparmor=apparmor_on))
    return result.spec["process"].get("apparmorProfile"), result.warnings


LOCAL_AA = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="my-profile")


@pytest.mark.parametrize(
    "sc",
    [
        {"apparmor": RD},
        {"apparmor": UNCONFINED},
        {"apparmor_profile": "runtime/default"},
        {"apparmor_profile": "unconfined"},
        {},
    ],
)
def test_apparmor_ignored_when_disabled(tmp_path: Path, sc: dict[str, Any]) -> None:
    assert _apparmor(tmp_path, False, **sc) == (None, [])


@pytest.mark.parametrize(
    "sc", [{"apparmor": LOCAL_AA}, {"apparmor_profile": "localhost/my-profile"}]
)
def test_apparmor_localhost(tmp_path: Path, sc: dict[str, Any]) -> None:
    with pytest.raises(FailedPrecondition, match="AppArmor is not enabled on this node"):
        _apparmor(tmp_path, False, **sc)
    assert _apparmor(tmp_path, True, **sc) == ("my-profile", [])


# ---- resources -------------------------------------------------------------------------


def _resources(
    tmp_path: Path, host: Any = None, **res: Any
) -> tuple[dict[str, Any], list[str], int]:
    result = build(tmp_path, make_config(resources=res), host=host or make_host())
    linux_res = dict(result.spec["linux"]["resources"])
    linux_res.pop("devices")
    return linux_res, result.warnings, result.spec["process"]["oomScoreAdj"]


def test_no_resources(tmp_path: Path) -> None:
    assert _resources(tmp_path) == ({}, [], 0)


def test_cpu_and_memory(tmp_path: Path) -> None:
    res, warnings, _ = _resources(
        tmp_path,
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        memory_limit_in_bytes=64 << 20,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=4 << 20)],
    )
    assert res == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 64 << 20, "swap": 64 << 20},  # no swap beyond the limit
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
    }
    assert warnings == []


def test_swap_limit(tmp_path: Path) -> None:
    res, _, _ = _resources(tmp_path, memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)
    assert res["memory"] == {"limit": 100, "swap": 300}
    res, _, _ = _resources(tmp_path, make_host(memory_swap=False), memory_limit_in_bytes=100)
    assert res["memory"] == {"limit": 100}


@pytest.mark.parametrize(
    ("value", "floor", "expected", "warned"),
    [(500, 0, 500, False), (-997, 0, 0, True), (-997, -1000, -997, False), (0, 0, 0, False)],
)
def test_oom_score_adj(tmp_path: Path, value: int, floor: int, expected: int, warned: bool) -> None:
    _, warnings, oom = _resources(tmp_path, make_host(min_oom_score_adj=floor), oom_score_adj=value)
    assert oom == expected
    assert bool(warnings) == warned
    if warned:
        assert "oom_score_adj -997 raised to 0" in warnings[0]


def test_oom_score_adj_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="oom_score_adj"):
        _resources(tmp_path, oom_score_adj=1001)


def test_unified_only_on_cgroup2(tmp_path: Path) -> None:
    res, warnings, _ = _resources(tmp_path, unified={"memory.high": "100"})
    assert "unified" not in res
    assert "memory.high" in warnings[0] and "cgroup v1" in warnings[0]
    res, warnings, _ = _resources(tmp_path, make_host(cgroup2=True), unified={"memory.high": "100"})
    assert res["unified"] == {"memory.high": "100"} and warnings == []


@pytest.mark.parametrize(
    ("limit", "swap", "says"),
    [
        (0, 1 << 20, "needs memory_limit_in_bytes as well"),
        (64 << 20, 1, "must be at least memory_limit_in_bytes"),
    ],
)
def test_swap_limits_the_kernel_would_refuse(
    tmp_path: Path, limit: int, swap: int, says: str
) -> None:
    with pytest.raises(InvalidArgument, match=says):
        _resources(tmp_path, memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=swap)
    res, _, _ = _resources(
        tmp_path, memory_limit_in_bytes=limit or 1, memory_swap_limit_in_bytes=-1
    )
    assert "limit" in res["memory"]

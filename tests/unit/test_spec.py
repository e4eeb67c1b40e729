"""build_spec: process (args, env, cwd, user), annotations, namespaces, hostname, misc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_spec_support import build, make_config, make_pod, make_rootfs

# ---- args ------------------------------------------------------------------------------

ARGS_CASES = [
    # (image Entrypoint, image Cmd, CRI command, CRI args, expected)
    (["/ep"], ["c1"], [], [], ["/ep", "c1"]),
    (["/ep"], ["c1"], ["/cmd"], [], ["/cmd"]),  # command drops the image Cmd too
    (["/ep"], ["c1"], ["/cmd"], ["a"], ["/cmd", "a"]),
    (["/ep"], ["c1"], [], ["a", "b"], ["/ep", "a", "b"]),
    (None, ["sh", "-c", "x"], [], [], ["sh", "-c", "x"]),
    (None, ["c1"], [], ["a"], ["a"]),
    (["/ep"], None, [], [], ["/ep"]),
    (None, None, ["/cmd"], [], ["/cmd"]),
]


@pytest.mark.parametrize(("entrypoint", "cmd", "command", "args", "expected"), ARGS_CASES)
def test_args_merging(
    tmp_path: Path,
    entrypoint: list[str] | None,
    cmd: list[str] | None,
    command: list[str],
    args: list[str],
    expected: list[str],
) -> None:
    image = {"Entrypoint": entrypoint, "Cmd": cmd}
    result = build(tmp_path, make_config(command=command, args=args), image)
    assert result.spec["process"]["args"] == expected


@pytest.mark.parametrize("image", [{}, {"Entrypoint": None, "Cmd": None}, {"Cmd": []}])
def test_no_command_is_invalid(tmp_path: Path, image: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        build(tmp_path, make_config(), image)


def test_image_cmd_not_a_list_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="Cmd"):
        build(tmp_path, make_config(), {"Cmd": "sh -c x"})


# ---- env -------------------------------------------------------------------------------


def _env(
    tmp_path: Path, image_env: list[str] | None, envs: dict[str, str], **pod: Any
) -> list[str]:
    config = make_config(envs=[pb.KeyValue(key=k, value=v) for k, v in envs.items()])
    image = {"Cmd": ["sh"], "Env": image_env}
    env: list[str] = build(tmp_path, config, image, pod=make_pod(tmp_path, **pod)).spec["process"][
        "env"
    ]
    return env


def test_env_override_keeps_order(tmp_path: Path) -> None:
    env = _env(tmp_path, ["A=1", "PATH=/x", "B=2"], {"B": "20", "C": "3", "A": "10"})
    assert env == ["A=10", "PATH=/x", "B=20", "C=3", "HOSTNAME=mypod"]


def test_env_defaults(tmp_path: Path) -> None:
    env = _env(tmp_path, None, {})
    assert env == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME=mypod",
    ]


def test_env_hostname_not_overridden(tmp_path: Path) -> None:
    assert "HOSTNAME=mine" in _env(tmp_path, [], {"HOSTNAME": "mine"})
    assert not [e for e in _env(tmp_path, [], {"HOSTNAME": "mine"}) if e == "HOSTNAME=mypod"]


def test_env_hostname_from_file_for_host_network(tmp_path: Path) -> None:
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p"))
    assert "HOSTNAME=from-file" in _env(tmp_path, [], {}, config=config)


def test_env_values_may_hold_equals_and_be_empty(tmp_path: Path) -> None:
    env = _env(tmp_path, ["X=a=b"], {"Y": "", "Z": "c=d"})
    assert env[:3] == ["X=a=b", "Y=", "Z=c=d"]


@pytest.mark.parametrize("key", ["", "A=B", "="])
def test_env_bad_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidArgument, match=r"envs\[0\]\.key"):
        _env(tmp_path, [], {key: "v"})


# ---- cwd -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("working_dir", "image_dir", "expected"),
    [("", None, "/"), ("", "/srv", "/srv"), ("/app", "/srv", "/app"), ("/app", None, "/app")],
)
def test_cwd(tmp_path: Path, working_dir: str, image_dir: str | None, expected: str) -> None:
    image = {"Cmd": ["sh"], "WorkingDir": image_dir}
    result = build(tmp_path, make_config(working_dir=working_dir), image)
    assert result.spec["process"]["cwd"] == expected


@pytest.mark.parametrize(("working_dir", "image_dir"), [("rel", None), ("", "rel/dir")])
def test_cwd_must_be_absolute(tmp_path: Path, working_dir: str, image_dir: str | None) -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        build(
            tmp_path, make_config(working_dir=working_dir), {"Cmd": ["sh"], "WorkingDir": image_dir}
        )


# ---- user ------------------------------------------------------------------------------

USER_CASES = [
    # (security context, image User, uid, gid, additionalGids)
    ({}, "", 0, 0, [0, 10]),  # root is listed in wheel (and in root, its own gid)
    ({}, "app", 1000, 1000, [1000, 10, 29]),
    ({}, "1000", 1000, 1000, [1000, 10, 29]),
    ({}, "4321", 4321, 0, [0]),  # a uid unknown to passwd is fine, gid 0
    ({}, "app:audio", 1000, 29, [29]),  # explicit group: no memberships
    ({}, "app:77", 1000, 77, [77]),
    ({}, "4321:4321", 4321, 4321, [4321]),
    ({}, "web", 33, 33, [33, 50]),
    ({"run_as_user": pb.Int64Value(value=1000)}, "web", 1000, 1000, [1000, 10, 29]),
    ({"run_as_user": pb.Int64Value(value=0)}, "app", 0, 0, [0, 10]),
    ({"run_as_user": pb.Int64Value(value=5000)}, "", 5000, 0, [0]),
    ({"run_as_username": "app"}, "", 1000, 1000, [1000, 10, 29]),
    (
        {"run_as_user": pb.Int64Value(value=1000), "run_as_group": pb.Int64Value(value=7)},
        "",
        1000,
        7,
        [7, 10, 29],
    ),
    (
        {"run_as_username": "web", "supplemental_groups": [100, 50, 200]},
        "",
        33,
        33,
        [33, 50, 100, 200],
    ),
    (
        {
            "run_as_username": "app",
            "supplemental_groups": [100],
            "supplemental_groups_policy": pb.Strict,
        },
        "",
        1000,
        1000,
        [1000, 100],
    ),
]


@pytest.mark.parametrize(("sc", "image_user", "uid", "gid", "gids"), USER_CASES)
def test_user(
    tmp_path: Path, sc: dict[str, Any], image_user: str, uid: int, gid: int, gids: list[int]
) -> None:
    result = build(tmp_path, make_config(sc=sc), {"Cmd": ["sh"], "User": image_user})
    assert result.spec["process"]["user"] == {"uid": uid, "gid": gid, "additionalGids": gids}


USER_ERRORS = [
    ({"run_as_username": "nobody"}, "", InvalidArgument, "run_as_username 'nobody'"),
    ({}, "nobody", InvalidArgument, "no user 'nobody'"),
    ({}, "app:nogroup", InvalidArgument, "no group 'nogroup'"),
    ({}, "app:", InvalidArgument, "empty group"),
    ({"run_as_group": pb.Int64Value(value=5)}, "app", InvalidArgument, "run_as_group needs"),
    (
        {"run_as_user": pb.Int64Value(value=1), "run_as_username": "app"},
        "",
        InvalidArgument,
        "only one of",
    ),
    ({"run_as_user": pb.Int64Value(value=-1)}, "", InvalidArgument, "run_as_user"),
]


@pytest.mark.parametrize(("sc", "image_user", "error", "match"), USER_ERRORS)
def test_user_errors(
    tmp_path: Path, sc: dict[str, Any], image_user: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build(tmp_path, make_config(sc=sc), {"Cmd": ["sh"], "User": image_user})


def test_user_without_passwd_file(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    result = build(tmp_path, make_config(), {"Cmd": ["sh"], "User": "123:456"})
    assert result.spec["process"]["user"] == {"uid": 123, "gid": 456, "additionalGids": [456]}
    with pytest.raises(InvalidArgument, match="no user 'app'"):
        build(tmp_path, make_config(), {"Cmd": ["sh"], "User": "app"})


def test_passwd_symlink_cannot_escape_rootfs(tmp_path: Path) -> None:
    """/etc/passwd -> /../../outside/passwd resolves inside the rootfs (where it is missing)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:666:666::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("../../outside/passwd")
    with pytest.raises(InvalidArgument, match="no user 'evil'"):
        build(tmp_path, make_config(), {"Cmd": ["sh"], "User": "evil"})


def test_passwd_symlink_inside_rootfs_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "shared" / "passwd").write_text("app:x:77:88::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/shared/passwd")  # absolute: taken inside the rootfs
    result = build(tmp_path, make_config(), {"Cmd": ["sh"], "User": "app"})
    assert result.spec["process"]["user"]["uid"] == 77


# ---- annotations, root, cgroups, misc -------------------------------------------------


def test_annotations_and_basics(tmp_path: Path) -> None:
    config = make_config(annotations={"user/key": "v"}, tty=True)
    spec = build(tmp_path, config).spec
    assert spec["ociVersion"] == "1.0.2-dev"
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": False}
    assert spec["process"]["terminal"] is True
    assert spec["linux"]["cgroupsPath"] == "/podling/sb1/c1"
    assert "sysctl" not in spec["linux"] and "rlimits" not in spec["process"]
    assert spec["annotations"] == {
        "user/key": "v",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "sb1",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.image-name": "busybox",
    }


def test_readonly_rootfs(tmp_path: Path) -> None:
    spec = build(tmp_path, make_config(sc={"readonly_rootfs": True})).spec
    assert spec["root"]["readonly"] is True


# ---- namespaces and hostname ----------------------------------------------------------


def _ns(
    tmp_path: Path, pid_mode: int, target_pid: int | None = None, **pod: Any
) -> list[dict[str, str]]:
    ns_opt = pb.NamespaceOption(pid=pid_mode, target_id="t1")  # type: ignore[arg-type]
    sc = {"namespace_options": ns_opt}
    spec = build(
        tmp_path, make_config(sc=sc), pod=make_pod(tmp_path, **pod), target_pid=target_pid
    ).spec
    assert "hostname" not in spec  # joins the pod's or the host's UTS namespace
    ns: list[dict[str, str]] = spec["linux"]["namespaces"]
    return ns


POD_NS = [
    {"type": "network", "path": "/run/netns/x"},
    {"type": "ipc", "path": "/run/ipc/x"},
    {"type": "uts", "path": "/run/uts/x"},
    {"type": "mount"},
]


@pytest.mark.parametrize(
    ("mode", "target_pid", "pid_entry"),
    [
        (pb.POD, None, [{"type": "pid", "path": "/proc/4242/ns/pid"}]),
        (pb.CONTAINER, None, [{"type": "pid"}]),
        (pb.NODE, None, []),
        (pb.TARGET, 777, [{"type": "pid", "path": "/proc/777/ns/pid"}]),
    ],
)
def test_pid_namespace_modes(
    tmp_path: Path, mode: int, target_pid: int | None, pid_entry: list[dict[str, str]]
) -> None:
    assert _ns(tmp_path, mode, target_pid) == [*pid_entry, *POD_NS]


def test_host_namespaces_are_left_out(tmp_path: Path) -> None:
    ns = _ns(tmp_path, pb.CONTAINER, namespaces={"ipc": "/p/ipc"})
    assert ns == [{"type": "pid"}, {"type": "ipc", "path": "/p/ipc"}, {"type": "mount"}]


def test_cgroup_namespace_only_on_cgroup2(tmp_path: Path) -> None:
    from tests.unit.test_spec_support import make_host

    spec = build(tmp_path, make_config(), host=make_host(cgroup2=True)).spec
    assert {"type": "cgroup"} in spec["linux"]["namespaces"]
    assert {"type": "cgroup"} not in build(tmp_path, make_config()).spec["linux"]["namespaces"]


def test_pid_pod_without_infra_process(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="no infra process"):
        _ns(tmp_path, pb.POD, infra_pid=None)


def test_pid_target_without_process(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="target"):
        _ns(tmp_path, pb.TARGET, None)


def test_userns_pod_mode_needs_a_pod_user_namespace(tmp_path: Path) -> None:
    ns = pb.NamespaceOption(pid=pb.CONTAINER, userns_options=pb.UserNamespace(mode=pb.POD))
    with pytest.raises(FailedPrecondition, match="recreate the pod with hostUsers: false"):
        build(tmp_path, make_config(sc={"namespace_options": ns}))
    ns.userns_options.mode = pb.NODE
    build(tmp_path, make_config(sc={"namespace_options": ns}))  # host userns: fine


def test_a_pod_user_namespace_is_joined_with_its_mappings(tmp_path: Path) -> None:
    ids = [pb.IDMapping(container_id=0, host_id=100000, length=65536)]
    userns = pb.UserNamespace(mode=pb.POD, uids=ids, gids=ids)
    pod_cfg = pb.PodSandboxConfig()
    pod_cfg.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    namespaces = {"user": "/p/ns/user", "network": "/p/ns/net"}
    pod = make_pod(tmp_path, config=pod_cfg, namespaces=namespaces)
    ns = pb.NamespaceOption(pid=pb.CONTAINER, userns_options=userns)
    spec = build(tmp_path, make_config(sc={"namespace_options": ns}), pod=pod).spec
    assert spec["linux"]["namespaces"][1] == {"type": "user", "path": "/p/ns/user"}
    mapping = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert spec["linux"]["uidMappings"] == spec["linux"]["gidMappings"] == mapping
    # a container that leaves userns_options unset still joins its pod's
    plain = build(tmp_path, make_config(), pod=pod).spec
    assert {"type": "user", "path": "/p/ns/user"} in plain["linux"]["namespaces"]
    with pytest.raises(InvalidArgument, match="privileged container cannot run"):
        build(tmp_path, make_config(sc={"namespace_options": ns, "privileged": True}), pod=pod)


def test_own_uts_namespace_gets_hostname() -> None:
    from podling.runtimes.spec_namespaces import own_uts

    assert own_uts([{"type": "uts"}]) is True
    assert own_uts([{"type": "uts", "path": "/x"}]) is False
    assert own_uts([{"type": "mount"}]) is False


# ---- stop signal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_signal", "cri_signal", "expected"),
    [
        (None, pb.RUNTIME_DEFAULT, "SIGTERM"),
        ("SIGQUIT", pb.RUNTIME_DEFAULT, "SIGQUIT"),
        ("kill", pb.RUNTIME_DEFAULT, "SIGKILL"),
        ("9", pb.RUNTIME_DEFAULT, "SIGKILL"),
        ("SIGRTMIN+3", pb.RUNTIME_DEFAULT, "SIGRTMIN+3"),
        ("SIGQUIT", pb.SIGINT, "SIGINT"),
        (None, pb.SIGRTMINPLUS1, "SIGRTMIN+1"),
    ],
)
def test_stop_signal(
    tmp_path: Path, image_signal: str | None, cri_signal: int, expected: str
) -> None:
    image = {"Cmd": ["sh"], "StopSignal": image_signal}
    result = build(tmp_path, make_config(stop_signal=cri_signal), image)
    assert result.stop_signal == expected
    assert result.warnings == []


def test_bad_image_stop_signal_warns(tmp_path: Path) -> None:
    result = build(tmp_path, make_config(), {"Cmd": ["sh"], "StopSignal": "SIGNOPE"})
    assert result.stop_signal == "SIGTERM"
    assert "SIGNOPE" in result.warnings[0]


def test_fifo_passwd_does_not_block(tmp_path: Path) -> None:
    import os

    root = make_rootfs(tmp_path)
    (root / "etc" / "passwd").unlink()
    os.mkfifo(root / "etc" / "passwd")
    result = build(tmp_path, make_config(), {"Cmd": ["sh"], "User": "5"})
    assert result.spec["process"]["user"]["uid"] == 5

"""build_spec: mounts (defaults, pod files, CRI mounts) and devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_spec_support import (
    build,
    destinations,
    make_config,
    make_host,
    make_pod,
    mount_at,
)

DEFAULT_ORDER = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
]


def test_default_mounts_in_order(tmp_path: Path) -> None:
    result = build(tmp_path)
    assert destinations(result) == DEFAULT_ORDER
    assert mount_at(result, "/sys")["options"][-1] == "ro"
    assert "ro" in mount_at(result, "/sys/fs/cgroup")["options"]
    assert mount_at(result, "/proc") == {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "noexec", "nodev"],
    }
    assert result.mounts == []


def test_pod_files_are_binds_rw_unless_readonly_rootfs(tmp_path: Path) -> None:
    pod_dir = tmp_path / "pod"
    rw = build(tmp_path)
    assert mount_at(rw, "/etc/hosts") == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": str(pod_dir / "hosts"),
        "options": ["rbind", "rprivate", "rw"],
    }
    assert mount_at(rw, "/etc/resolv.conf")["source"] == str(pod_dir / "resolv.conf")
    assert mount_at(rw, "/etc/hostname")["source"] == str(pod_dir / "hostname")
    ro = build(tmp_path, make_config(sc={"readonly_rootfs": True}))
    for dest in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
        assert mount_at(ro, dest)["options"][-1] == "ro"


def test_shm_is_the_pods_or_a_private_tmpfs(tmp_path: Path) -> None:
    shm = mount_at(build(tmp_path), "/dev/shm")
    assert shm["type"] == "bind" and shm["source"] == str(tmp_path / "pod" / "shm")
    private = mount_at(build(tmp_path, pod=make_pod(tmp_path, shm_path=None)), "/dev/shm")
    assert private["type"] == "tmpfs" and "size=65536k" in private["options"]


def test_privileged_sysfs_and_cgroupfs_are_writable(tmp_path: Path) -> None:
    result = build(tmp_path, make_config(sc={"privileged": True}))
    assert "ro" not in mount_at(result, "/sys")["options"]
    assert "ro" not in mount_at(result, "/sys/fs/cgroup")["options"]


def _mounts(*mounts: pb.Mount) -> pb.ContainerConfig:
    return make_config(mounts=list(mounts))


def test_cri_mounts_sorted_by_depth_after_defaults(tmp_path: Path) -> None:
    config = _mounts(
        pb.Mount(container_path="/a/b/c", host_path="/data/sub"),
        pb.Mount(container_path="/a", host_path="/data", readonly=True),
        pb.Mount(container_path="/z/y", host_path="/var/log"),
    )
    result = build(tmp_path, config)
    assert destinations(result) == [*DEFAULT_ORDER, "/a", "/z/y", "/a/b/c"]
    assert mount_at(result, "/a") == {
        "destination": "/a",
        "type": "bind",
        "source": "/data",
        "options": ["rbind", "rprivate", "ro"],
    }
    assert mount_at(result, "/z/y")["options"] == ["rbind", "rprivate", "rw"]
    assert [m.container_path for m in result.mounts] == ["/a", "/z/y", "/a/b/c"]


def test_symlinked_host_path_is_resolved(tmp_path: Path) -> None:
    result = build(tmp_path, _mounts(pb.Mount(container_path="/x", host_path="/link/x")))
    assert mount_at(result, "/x")["source"] == "/real/x"
    assert result.mounts[0].host_path == "/real/x"
    assert result.mounts[0].container_path == "/x"


def test_real_symlink_resolution(tmp_path: Path) -> None:
    """With the real HostInfo path functions, a symlinked host dir mounts its target."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    host = make_host(resolve_path=os.path.realpath, exists=os.path.exists)
    result = build(
        tmp_path,
        _mounts(pb.Mount(container_path="/x", host_path=str(tmp_path / "link"))),
        host=host,
    )
    assert mount_at(result, "/x")["source"] == str(real)


def test_missing_host_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="mount host path /nope does not exist"):
        build(tmp_path, _mounts(pb.Mount(container_path="/x", host_path="/nope")))


@pytest.mark.parametrize(
    ("mount", "match"),
    [
        (pb.Mount(container_path="rel", host_path="/data"), r"mounts\[0\]\.container_path"),
        (pb.Mount(container_path="/", host_path="/data"), "cannot mount over /"),
        (pb.Mount(container_path="/x/..", host_path="/data"), "cannot mount over /"),
        (pb.Mount(container_path="/x", host_path=""), "host_path is empty"),
        (pb.Mount(container_path="/x", host_path="data"), "absolute"),
        (
            pb.Mount(container_path="/x", host_path="/data", recursive_read_only=True),
            "recursive_read_only",
        ),
    ],
)
def test_bad_mounts(tmp_path: Path, mount: pb.Mount, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        build(tmp_path, _mounts(mount))


@pytest.mark.parametrize(
    "mount",
    [
        pb.Mount(container_path="/x", host_path="/data", uidMappings=[pb.IDMapping(length=1)]),
    ],
)
def test_unsupported_mounts(tmp_path: Path, mount: pb.Mount) -> None:
    with pytest.raises(FailedPrecondition, match="per-mount id mappings"):
        build(tmp_path, _mounts(mount))


def test_recursive_read_only_adds_rro(tmp_path: Path) -> None:
    rro = pb.Mount(container_path="/x", host_path="/data", readonly=True, recursive_read_only=True)
    plain = pb.Mount(container_path="/y", host_path="/data", readonly=True)
    mounts = {m["destination"]: m for m in build(tmp_path, _mounts(rro, plain)).spec["mounts"]}
    assert mounts["/x"]["options"] == ["rbind", "rprivate", "ro", "rro"]
    assert "rro" not in mounts["/y"]["options"]


def _image_mount(path: str = "/img", **kw: object) -> pb.Mount:
    return pb.Mount(container_path=path, image=pb.ImageSpec(image="sha256:abc"), **kw)  # type: ignore[arg-type]


def test_image_volume_is_a_readonly_bind_of_the_prepared_dir(tmp_path: Path) -> None:
    config = _mounts(
        pb.Mount(container_path="/data", host_path="/data"),
        _image_mount("/img/./", readonly=False),
    )
    result = build(tmp_path, config, image_volumes={1: "/state/c1/imagevols/1"})
    assert mount_at(result, "/img") == {
        "destination": "/img",
        "type": "bind",
        "source": "/state/c1/imagevols/1",
        "options": ["rbind", "rprivate", "ro"],  # read-only although readonly=false
    }
    assert mount_at(result, "/data")["options"][-1] == "rw"
    applied = result.mounts[1]
    assert applied.host_path == "/state/c1/imagevols/1" and applied.readonly
    assert applied.image.image == "sha256:abc"
    assert result.mounts[0].host_path == "/data" and not result.mounts[0].readonly


def test_image_volume_not_prepared_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        FailedPrecondition,
        match=r"mounts\[0\] \(/img\): image volume "
        r"sha256:abc was not prepared",
    ):
        build(tmp_path, _mounts(_image_mount()))
    with pytest.raises(FailedPrecondition, match="not prepared"):
        build(tmp_path, _mounts(_image_mount()), image_volumes={1: "/elsewhere"})


@pytest.mark.parametrize(
    ("mount", "match"),
    [
        (_image_mount(host_path="/data"), "set either host_path or image"),
        (_image_mount("img"), "must be an absolute path"),
        (_image_mount("/"), "cannot mount over /"),
        (_image_mount(propagation=7), "propagation 7 is not known"),
    ],
)
def test_bad_image_volumes(tmp_path: Path, mount: pb.Mount, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        build(tmp_path, _mounts(mount), image_volumes={0: "/state/iv"})


def test_container_path_is_cleaned(tmp_path: Path) -> None:
    result = build(tmp_path, _mounts(pb.Mount(container_path="/a//b/./c/", host_path="/data")))
    assert destinations(result)[-1] == "/a/b/c"


@pytest.mark.parametrize(
    ("propagations", "options", "rootfs"),
    [
        ([pb.PROPAGATION_PRIVATE], ["rprivate"], None),
        ([pb.PROPAGATION_HOST_TO_CONTAINER], ["rslave"], "rslave"),
        ([pb.PROPAGATION_BIDIRECTIONAL], ["rshared"], "rshared"),
        (
            [pb.PROPAGATION_HOST_TO_CONTAINER, pb.PROPAGATION_BIDIRECTIONAL],
            ["rslave", "rshared"],
            "rshared",
        ),
    ],
)
def test_propagation(
    tmp_path: Path, propagations: list[int], options: list[str], rootfs: str | None
) -> None:
    mounts = [
        pb.Mount(container_path=f"/m{i}", host_path="/data", propagation=p)  # type: ignore[arg-type]
        for i, p in enumerate(propagations)
    ]
    result = build(tmp_path, _mounts(*mounts))
    assert [mount_at(result, f"/m{i}")["options"][1] for i in range(len(mounts))] == options
    assert result.spec["linux"].get("rootfsPropagation") == rootfs


@pytest.mark.parametrize(
    "dest", ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/dev/shm", "/sys"]
)
def test_cri_mount_replaces_default(tmp_path: Path, dest: str) -> None:
    result = build(tmp_path, _mounts(pb.Mount(container_path=dest, host_path="/data")))
    assert destinations(result).count(dest) == 1
    assert mount_at(result, dest)["source"] == "/data"
    assert destinations(result)[-1] == dest  # where CRI mounts go


def test_cri_dev_mount_replaces_dev_subtree(tmp_path: Path) -> None:
    result = build(tmp_path, _mounts(pb.Mount(container_path="/dev", host_path="/data")))
    assert [d for d in destinations(result) if d.startswith("/dev")] == ["/dev"]
    assert mount_at(result, "/dev")["type"] == "bind"


# ---- devices ---------------------------------------------------------------------------


def test_devices_default_rules(tmp_path: Path) -> None:
    linux = build(tmp_path).spec["linux"]
    assert linux["devices"] == []
    rules = linux["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = {
        (r.get("type"), r.get("major"), r.get("minor")) for r in rules[1:] if "rw" in r["access"]
    }
    assert {("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9)} <= allowed
    assert {("c", 5, 0), ("c", 5, 1), ("c", 5, 2), ("c", 136, None)} <= allowed
    assert ("b", 8, 0) not in allowed


def test_cri_devices(tmp_path: Path) -> None:
    config = make_config(
        devices=[
            pb.Device(host_path="/dev/fuse", container_path="/dev/fuse", permissions="rw"),
            pb.Device(host_path="/dev/sda", container_path="/dev/xvda", permissions="mr"),
        ]
    )
    linux = build(tmp_path, config).spec["linux"]
    assert linux["devices"] == [
        {
            "path": "/dev/fuse",
            "type": "c",
            "major": 10,
            "minor": 229,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        },
        {
            "path": "/dev/xvda",
            "type": "b",
            "major": 8,
            "minor": 0,
            "fileMode": 0o660,
            "uid": 0,
            "gid": 6,
        },
    ]
    assert linux["resources"]["devices"][-2:] == [
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
        {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "rm"},
    ]


def test_privileged_allows_every_device(tmp_path: Path) -> None:
    config = make_config(
        sc={"privileged": True},
        devices=[pb.Device(host_path="/dev/fuse", container_path="/dev/fuse")],
    )
    linux = build(tmp_path, config).spec["linux"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert [d["path"] for d in linux["devices"]] == ["/dev/fuse"]


@pytest.mark.parametrize(
    ("device", "match"),
    [
        (
            pb.Device(host_path="/dev/nope", container_path="/dev/x"),
            "device host path /dev/nope does not exist",
        ),
        (pb.Device(host_path="/dev/notadevice", container_path="/dev/x"), "not a device"),
        (
            pb.Device(host_path="/dev/fuse", container_path="/dev/x", permissions="rwx"),
            "permissions",
        ),
        (pb.Device(host_path="/dev/fuse", container_path="x"), "absolute"),
    ],
)
def test_bad_devices(tmp_path: Path, device: pb.Device, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        build(tmp_path, make_config(devices=[device]))


def test_real_stat_device() -> None:
    from podling.runtimes.spec_types import stat_device

    info = stat_device("/dev/null")
    assert (info.kind, info.major, info.minor) == ("c", 1, 3)
    with pytest.raises(ValueError, match="not a device"):
        stat_device("/")

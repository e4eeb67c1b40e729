"""oslib.cgroups.create on a fake v1 tree: all or nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from podling.oslib import cgroups


def fake_root(tmp_path: Path) -> Path:
    for h in ("cpu", "memory"):
        (tmp_path / h).mkdir()
        (tmp_path / h / "cgroup.procs").touch()
    (tmp_path / "cpu" / "kubepods").mkdir()  # the kubelet's parent exists already
    return tmp_path


def test_a_refused_limit_leaves_nothing_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake_root(tmp_path)

    def refuse(*args: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(cgroups, "_limit", refuse)
    with pytest.raises(OSError):
        cgroups.create("/kubepods/pod1", cpu_shares=1, root=root)
    assert (root / "cpu" / "kubepods").is_dir()  # not ours: kept
    assert not (root / "cpu" / "kubepods" / "pod1").exists()
    assert not (root / "memory" / "kubepods").exists()  # made by the call: removed


def test_limits_are_written(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    cgroups.create("/kubepods/pod2", cpu_shares=512, memory_limit=64 << 20, root=root)
    assert (root / "cpu" / "kubepods" / "pod2" / "cpu.shares").read_text() == "512"
    assert (root / "memory/kubepods/pod2/memory.limit_in_bytes").read_text() == str(64 << 20)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("cpu_shares", 1, "cpu_shares 1 is outside"),
        ("cpu_period", 10, "cpu_period 10 is outside"),
        ("cpu_quota", -5, "cpu_quota -5 must be -1"),
    ],
)
def test_pod_cpu_values_the_cgroup_would_refuse_are_invalid(
    field: str, value: int, says: str
) -> None:
    from cri_api.v1 import api_pb2 as pb

    from podling.errors import InvalidArgument
    from podling.services import validate

    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"),
    )
    setattr(cfg.linux.resources, field, value)
    with pytest.raises(InvalidArgument, match=says):
        validate.pod_config(cfg)


def test_a_refused_dir_leaves_nothing_made(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "memory" / "kubepods").write_text("")  # memory's dir cannot be made
    with pytest.raises(OSError):
        cgroups.create("/kubepods/pod3", root=root)
    assert not (root / "cpu" / "kubepods" / "pod3").exists()  # cpu's was made, then removed


def test_a_negative_pod_memory_limit_is_invalid() -> None:
    from cri_api.v1 import api_pb2 as pb

    from podling.errors import InvalidArgument
    from podling.services import validate

    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"))
    cfg.linux.resources.memory_limit_in_bytes = -2
    with pytest.raises(InvalidArgument, match="memory_limit_in_bytes -2 is negative"):
        validate.pod_config(cfg)


@pytest.mark.parametrize("path", ["\x00", "proc/kcore", "/proc/../etc", "/proc/x\x00y"])
@pytest.mark.parametrize("field", ["masked_paths", "readonly_paths"])
def test_masked_and_readonly_paths_must_be_clean_absolute_paths(field: str, path: str) -> None:
    from cri_api.v1 import api_pb2 as pb

    from podling.errors import InvalidArgument
    from podling.services import validate

    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="i"))
    getattr(cfg.linux.security_context, field).extend(["/proc/ok", path])
    with pytest.raises(InvalidArgument, match=rf"security_context\.{field}\[1\]"):
        validate.container_config(cfg)

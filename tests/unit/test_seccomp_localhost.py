"""seccomp Localhost profiles: where a localhost_ref is read from ([runtime]
seccomp_profile_root for relative refs) and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.config import Config
from podling.errors import InvalidArgument
from podling.runtimes.spec_security import localhost_path
from tests.unit.test_spec_support import build, make_config, make_host

ALLOW = {"defaultAction": "SCMP_ACT_ALLOW"}
NO_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}],
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A profile root with profiles/no-mkdir.json, and a profile outside it."""
    r = tmp_path / "seccomp"
    (r / "profiles").mkdir(parents=True)
    (r / "profiles" / "no-mkdir.json").write_text(json.dumps(NO_MKDIR))
    (tmp_path / "outside.json").write_text(json.dumps(ALLOW))
    return r


def _seccomp(tmp_path: Path, root: Path | None, **sc: object) -> object:
    host = make_host(seccomp_profile_root=root)
    return build(tmp_path, make_config(sc=sc), host=host).spec["linux"].get("seccomp")


def local(ref: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=ref)


def test_default_root_is_the_kubelets() -> None:
    assert Config().runtime.seccomp_profile_root == "/var/lib/kubelet/seccomp"


def test_relative_ref_is_read_under_the_root(tmp_path: Path, root: Path) -> None:
    profile = _seccomp(tmp_path, root, seccomp=local("profiles/no-mkdir.json"))
    assert profile == {**NO_MKDIR, "architectures": [], "syscalls": NO_MKDIR["syscalls"]}
    # the deprecated string form takes a relative path too
    legacy = _seccomp(tmp_path, root, seccomp_profile_path="localhost/profiles/no-mkdir.json")
    assert legacy == profile


def test_absolute_ref_is_used_as_given(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside.json"
    assert localhost_path(str(outside), root) == outside
    assert _seccomp(tmp_path, root, seccomp=local(str(outside))) is not None


def test_dotdot_inside_the_root_is_fine(root: Path) -> None:
    resolved = localhost_path("profiles/../profiles/no-mkdir.json", root)
    assert resolved == root.resolve() / "profiles" / "no-mkdir.json"


@pytest.mark.parametrize("ref", ["../outside.json", "profiles/../../outside.json", ".", ""])
def test_escaping_refs_are_refused(root: Path, ref: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        localhost_path(ref, root)
    msg = str(e.value)
    if ref:
        assert f"seccomp localhost_ref {ref!r} leaves the profile root {root}" in msg
        assert "[runtime] seccomp_profile_root" in msg
    else:
        assert "Localhost needs a localhost_ref" in msg


def test_symlink_out_of_the_root_is_refused(tmp_path: Path, root: Path) -> None:
    os.symlink(tmp_path / "outside.json", root / "escape.json")
    os.symlink(tmp_path, root / "up")
    for ref in ("escape.json", "up/outside.json"):
        with pytest.raises(InvalidArgument, match="leaves the profile root"):
            _seccomp(tmp_path, root, seccomp=local(ref))
    # a symlink that stays inside the root is followed
    os.symlink("profiles/no-mkdir.json", root / "inside.json")
    assert localhost_path("inside.json", root) == root.resolve() / "profiles" / "no-mkdir.json"


def test_missing_and_invalid_profiles_name_the_resolved_path(tmp_path: Path, root: Path) -> None:
    missing = root.resolve() / "profiles" / "nope.json"
    with pytest.raises(InvalidArgument) as e:
        _seccomp(tmp_path, root, seccomp=local("profiles/nope.json"))
    assert f"seccomp profile {missing} does not exist on this node" in str(e.value)
    assert "'profiles/nope.json'" in str(e.value)
    (root / "bad.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match=f"seccomp profile {root.resolve()}/bad.json is not"):
        _seccomp(tmp_path, root, seccomp=local("bad.json"))
    (root / "norule.json").write_text('{"syscalls": []}')
    with pytest.raises(InvalidArgument, match="defaultAction is missing"):
        _seccomp(tmp_path, root, seccomp=local("norule.json"))


def test_relative_ref_without_a_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no \[runtime\] seccomp_profile_root"):
        _seccomp(tmp_path, None, seccomp=local("profiles/x.json"))

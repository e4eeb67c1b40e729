"""Namespace pinning checks that need no root: sysctl rules, paths, early refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from podling.errors import InvalidArgument, NotFound
from podling.sandbox.namespaces import PinnedNamespaces, check_sysctls, pin_namespaces
from podling.sandbox.ns_thread import run_in_netns


@pytest.mark.parametrize(
    "name",
    [
        "net.ipv4.ip_forward",
        "net/ipv4/conf/eth0.100/rp_filter",
        "kernel.shmmax",
        "kernel.shm_rmid_forced",
        "kernel.msgmnb",
        "kernel.sem",
        "fs.mqueue.msg_max",
    ],
)
def test_namespaced_sysctls_pass(name: str) -> None:
    check_sysctls({name: "1"}, net=True, ipc=True)


@pytest.mark.parametrize(
    "name", ["kernel.panic", "vm.swappiness", "fs.file-max", "kernel.hostname"]
)
def test_host_wide_sysctls_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match=f"sysctl {name} is not namespaced"):
        check_sysctls({name: "1"}, net=True, ipc=True)


def test_net_sysctl_with_host_network() -> None:
    with pytest.raises(
        InvalidArgument, match=r"net.core.somaxconn needs the pod's own network.*hostNetwork"
    ):
        check_sysctls({"net.core.somaxconn": "1024"}, net=False, ipc=True)
    check_sysctls({"kernel.shmmax": "1"}, net=False, ipc=True)


def test_ipc_sysctl_with_host_ipc() -> None:
    with pytest.raises(InvalidArgument, match=r"kernel.msgmax needs the pod's own IPC.*hostIPC"):
        check_sysctls({"kernel.msgmax": "1"}, net=True, ipc=False)
    check_sysctls({"net.ipv4.ip_forward": "1"}, net=True, ipc=False)


@pytest.mark.parametrize("name", ["net..x", "net/../../etc", "", "net.ipv4."])
def test_malformed_sysctl_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="malformed"):
        check_sysctls({name: "1"}, net=True, ipc=True)


def test_multiline_value_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="multi-line"):
        check_sysctls({"net.ipv4.ip_forward": "1\n0"}, net=True, ipc=True)


def test_paths_names_the_pinned_ones() -> None:
    p = PinnedNamespaces(net=Path("/x/net"), ipc=None, uts=Path("/x/uts"))
    assert p.paths() == {"network": "/x/net", "uts": "/x/uts"}
    assert PinnedNamespaces(None, None, None).paths() == {}


def test_bad_sysctl_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"kernel\.panic is not namespaced"):
        pin_namespaces(
            tmp_path / "ns",
            net=True,
            ipc=True,
            uts=True,
            hostname="h",
            sysctls={"kernel.panic": "1"},
        )
    assert not (tmp_path / "ns").exists()


def test_bad_hostname_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="hostname"):
        pin_namespaces(
            tmp_path / "ns", net=False, ipc=False, uts=True, hostname="a" * 65, sysctls={}
        )
    assert not (tmp_path / "ns").exists()


def test_nothing_to_pin(tmp_path: Path) -> None:
    pinned = pin_namespaces(
        tmp_path / "ns", net=False, ipc=False, uts=False, hostname="h", sysctls={}
    )
    assert pinned == PinnedNamespaces(None, None, None)
    assert not (tmp_path / "ns").exists()


def test_run_in_missing_netns(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        run_in_netns(tmp_path / "gone", lambda: 1)

"""The pod's hostname, resolv.conf and hosts files (no root needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from podling.errors import InvalidArgument
from podling.sandbox.files import DnsSpec, PodFiles, write_pod_files


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path]:
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch host.example\n")
    hosts = tmp_path / "host-hosts"
    hosts.write_text("127.0.0.1 localhost\n192.0.2.7 thehost\n")
    return resolv, hosts


def write(tmp_path: Path, host: tuple[Path, Path], **kw: object) -> PodFiles:
    args: dict[str, object] = {
        "hostname": "web-0",
        "dns": None,
        "host_network": False,
        "pod_ips": ["10.88.0.5"],
        "host_resolv": host[0],
        "host_hosts": host[1],
    }
    args.update(kw)
    return write_pod_files(tmp_path / "pod", **args)  # type: ignore[arg-type]


def test_dns_config_makes_resolv_conf(tmp_path: Path, host: tuple[Path, Path]) -> None:
    dns = DnsSpec(
        ("10.96.0.10", "fd00::a"),
        ("ns.svc.cluster.local", "svc.cluster.local"),
        ("ndots:5", "edns0"),
    )
    files = write(tmp_path, host, dns=dns)
    assert files.resolv_conf == tmp_path / "pod" / "resolv.conf"
    assert files.resolv_conf.read_text() == (
        "nameserver 10.96.0.10\nnameserver fd00::a\n"
        "search ns.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
    )


def test_dns_without_searches_or_options(tmp_path: Path, host: tuple[Path, Path]) -> None:
    files = write(tmp_path, host, dns=DnsSpec(("10.96.0.10",), (), ()))
    assert files.resolv_conf.read_text() == "nameserver 10.96.0.10\n"


@pytest.mark.parametrize("dns", [None, DnsSpec((), (), ())])
def test_no_dns_config_copies_the_hosts(
    tmp_path: Path, host: tuple[Path, Path], dns: DnsSpec | None
) -> None:
    files = write(tmp_path, host, dns=dns)
    assert files.resolv_conf.read_text() == host[0].read_text()


def test_hosts_for_pod_network(tmp_path: Path, host: tuple[Path, Path]) -> None:
    files = write(tmp_path, host, pod_ips=["10.88.0.5", "fd00::5"])
    lines = files.hosts.read_text().splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in lines
    assert lines[-2:] == ["10.88.0.5\tweb-0", "fd00::5\tweb-0"]
    assert "thehost" not in files.hosts.read_text()


def test_host_network_copies_hosts_file(tmp_path: Path, host: tuple[Path, Path]) -> None:
    files = write(tmp_path, host, host_network=True, pod_ips=[])
    assert files.hosts.read_text() == host[1].read_text()


def test_hostname_file_and_modes(tmp_path: Path, host: tuple[Path, Path]) -> None:
    files = write(tmp_path, host)
    assert files.hostname.read_text() == "web-0\n"
    for p in (files.hostname, files.resolv_conf, files.hosts):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    again = write(tmp_path, host, hostname="web-1")
    assert again.hostname.read_text() == "web-1\n"
    assert sorted(p.name for p in (tmp_path / "pod").iterdir()) == [
        "hostname",
        "hosts",
        "resolv.conf",
    ]


def test_search_limit(tmp_path: Path, host: tuple[Path, Path]) -> None:
    ok = tuple(f"d{i}.example" for i in range(32))
    assert write(tmp_path, host, dns=DnsSpec(("10.0.0.1",), ok, ())).resolv_conf.exists()
    with pytest.raises(InvalidArgument, match="33 search domains; at most 32"):
        write(tmp_path / "x", host, dns=DnsSpec(("10.0.0.1",), (*ok, "one.more"), ()))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("dns", "match"),
    [
        (DnsSpec(("dns.example.com",), (), ()), "not an IP address"),
        (DnsSpec(("10.0.0.1",), ("a b",), ()), "search domain 'a b'"),
        (DnsSpec(("10.0.0.1",), (), ("ndots:5\nnameserver 1.2.3.4",)), "option"),
        (DnsSpec(("10.0.0.1",), ("x" * 2049,), ()), "longer than 2048"),
    ],
)
def test_bad_dns_config(tmp_path: Path, host: tuple[Path, Path], dns: DnsSpec, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        write(tmp_path, host, dns=dns)
    assert not (tmp_path / "pod").exists()


@pytest.mark.parametrize("name", ["", "a b", "x\ny", "a" * 254])
def test_bad_hostname(tmp_path: Path, host: tuple[Path, Path], name: str) -> None:
    with pytest.raises(InvalidArgument, match="hostname"):
        write(tmp_path, host, hostname=name)

"""Pinned namespaces and CNI networking for real: the kernel, CNI plugins 1.1.1
(/usr/lib/cni: loopback, bridge, host-local, portmap), iptables.

Resources of this module: bridges plt1..plt4, the veth plt-out, addresses in
10.91.0.0/16 and 10.92.0.0/30, dirs under tmp_path; iptables rules only those the
plugins and podling's masquerading make for these pods. Traffic goes only to 127.0.0.1,
to the pods' addresses and to 10.92.0.2, all inside network namespaces made here.

hostPort on 127.0.0.1: the default conflist sets portmap's "snat": true. The plugin then
sets net.ipv4.conf.<bridge>.route_localnet=1 itself (so a packet from 127.0.0.1 may be
routed out of the bridge to the pod) and masquerades 127.0.0.1 sources (so the pod's
answer comes back); nothing else is needed (checked by test_port_mapping_on_localhost).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from podling.errors import AlreadyExists, Internal, InvalidArgument, NotFound, Unavailable
from podling.oslib import ns
from podling.sandbox import namespaces, portmap
from podling.sandbox.cni import CniManager, DefaultNetwork, PortMapping
from podling.sandbox.masquerade import chain_name
from podling.sandbox.namespaces import PinnedNamespaces, pin_namespaces, unpin
from podling.sandbox.ns_thread import run_in_namespace, run_in_netns

pytestmark = pytest.mark.root

CNI_BIN = Path("/usr/lib/cni")
PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [line.split()[4] for line in lines]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def nat_rules_naming(text: str) -> list[str]:
    return [line for line in run("iptables-save", "-t", "nat").splitlines() if text in line]


def veths_on(bridge: str) -> str:
    return run("ip", "-o", "link", "show", "master", bridge).strip()


def remove_portmap_chains() -> None:
    """portmap's shared chains outlive every pod; podling releases them when unused."""
    portmap.release_unused_chains()


class Env:
    """Per-test network resources, all released at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bridges: list[str] = []
        self.links: list[str] = []  # other interfaces of the host's, deleted at the end
        self.pinned: list[PinnedNamespaces] = []
        self.added: list[tuple[CniManager, str, Path]] = []

    def manager(self, n: int, conf_dir: Path | None = None) -> CniManager:
        bridge = f"plt{n}"
        self.bridges.append(bridge)
        default = DefaultNetwork(bridge=bridge, subnet=f"10.91.{n}.0/24", name=f"plt{n}net")
        d = self.tmp / f"cni{n}"
        return CniManager(conf_dir or d / "conf", [CNI_BIN], d / "cache", d / "ipam", default)

    def pin(self, name: str, **kw: object) -> PinnedNamespaces:
        args: dict[str, object] = {
            "net": True,
            "ipc": False,
            "uts": False,
            "hostname": None,
            "sysctls": {},
        }
        args.update(kw)
        p = pin_namespaces(self.tmp / name, **args)  # type: ignore[arg-type]
        self.pinned.append(p)
        return p

    async def add(
        self, m: CniManager, sid: str, netns: Path, ports: list[PortMapping] | None = None
    ) -> list[str]:
        self.added.append((m, sid, netns))
        result = await m.add(
            sid,
            netns,
            pod_name=sid,
            pod_namespace="plt",
            pod_uid=f"u-{sid}",
            port_mappings=ports or [],
        )
        return result.ips

    def close(self) -> None:
        async def delete_all() -> None:
            for m, sid, netns in self.added:
                await m.delete(sid, netns)  # a no-op for pods the test deleted

        # a thread of its own: this may run while the test's event loop is still set
        t = threading.Thread(target=asyncio.run, args=(delete_all(),))
        t.start()
        t.join()
        for p in self.pinned:
            unpin(p)
        for link in self.bridges + self.links:
            if run("ip", "-o", "link", "show", link):
                run("ip", "link", "del", link)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    had_portmap = bool(run("iptables", "-t", "nat", "-S", PORTMAP_CHAINS[0]))
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()
        if not had_portmap:
            remove_portmap_chains()


class PodServer:
    """A TCP listener on 0.0.0.0:<port> inside a netns; answers each connection with
    `reply` (None: the peer's address) from a thread (the socket stays in the netns)."""

    def __init__(
        self, netns: Path, port: int = 8080, reply: bytes | None = b"hello from the pod"
    ) -> None:
        self.reply = reply
        self.sock = run_in_netns(netns, lambda: socket.create_server(("0.0.0.0", port)))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(self.reply or peer[0].encode())

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def fetch(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        return s.recv(100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- namespaces ----------------------------------------------------------------------


def threads_outside(kind: str) -> list[str]:
    """This process' threads whose `kind` namespace is not the main thread's, once any
    that are only exiting are gone: Thread.join() returns before the kernel has removed
    the thread from /proc/self/task (seen here as a rare failure), so a thread is only
    counted when it is still there after a second."""
    main = Path(f"/proc/self/ns/{kind}").stat().st_ino
    deadline = time.monotonic() + 1.0
    while True:
        outside = []
        for task in Path("/proc/self/task").iterdir():
            try:
                if (task / "ns" / kind).stat().st_ino != main:
                    outside.append(task.name)
            except FileNotFoundError:
                pass  # exited while we looked
        if not outside or time.monotonic() > deadline:
            return outside
        time.sleep(0.01)


def test_pins_made_at_once_each_get_their_own_namespaces(env: Env) -> None:
    # pinning runs in threads of the daemon; several at once must not share or leak
    def pin(i: int) -> tuple[str, int]:
        p = env.pin(f"ns{i}", net=True, ipc=True, uts=True, hostname=f"plt-{i}", sysctls={})
        assert p.uts is not None and p.net is not None
        return run_in_namespace(p.uts, ns.CLONE_NEWUTS, socket.gethostname), p.net.stat().st_ino

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(pin, range(6)))
    assert [name for name, _ in got] == [f"plt-{i}" for i in range(6)]
    assert len({ino for _, ino in got}) == 6
    assert threads_outside("net") == threads_outside("uts") == []


def test_pin_with_hostname_and_sysctls(env: Env) -> None:
    sysctls = {"net.ipv4.ip_unprivileged_port_start": "123", "kernel.shmmni": "2345"}
    p = env.pin("ns", net=True, ipc=True, uts=True, hostname="plt-pod", sysctls=sysctls)
    assert p.paths() == {
        k: str(env.tmp / "ns" / f) for k, f in (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))
    }
    for f, kind in ((p.net, "net"), (p.ipc, "ipc"), (p.uts, "uts")):
        assert f is not None
        assert f.stat().st_ino != Path(f"/proc/self/ns/{kind}").stat().st_ino
    assert p.net is not None and p.ipc is not None and p.uts is not None
    read = lambda name: Path("/proc/sys", name).read_text().strip()  # noqa: E731
    assert run_in_netns(p.net, lambda: read("net/ipv4/ip_unprivileged_port_start")) == "123"
    assert run_in_namespace(p.ipc, ns.CLONE_NEWIPC, lambda: read("kernel/shmmni")) == "2345"
    assert run_in_namespace(p.uts, ns.CLONE_NEWUTS, socket.gethostname) == "plt-pod"
    # the host is untouched
    assert read("net/ipv4/ip_unprivileged_port_start") != "123"
    assert read("kernel/shmmni") != "2345"
    assert socket.gethostname() != "plt-pod"
    for kind in ("net", "ipc", "uts"):  # no thread of ours stayed behind in them
        assert threads_outside(kind) == []
    # and a separate process entering by path sees the same (nsenter, not our code)
    script = "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni"
    out = run("nsenter", f"--net={p.net}", f"--ipc={p.ipc}", f"--uts={p.uts}", "sh", "-c", script)
    assert out.split() == ["plt-pod", "123", "2345"]


def test_unpin_leaves_nothing(env: Env) -> None:
    p = env.pin("ns", net=True, ipc=True, uts=True, hostname="x", sysctls={})
    assert len(mounts_under(env.tmp / "ns")) == 4  # the dir's own bind + three pins
    unpin(p)
    assert mounts_under(env.tmp / "ns") == []
    assert list((env.tmp / "ns").iterdir()) == []
    unpin(p)  # idempotent
    with pytest.raises(NotFound, match="does not exist"):
        run_in_netns(env.tmp / "ns" / "net", lambda: None)


def test_unpin_of_pins_whose_dir_is_gone(env: Env) -> None:
    """Recovery unpins the standard paths of a pod whose start crashed before its
    namespaces were pinned: nothing there is fine."""
    gone = env.tmp / "never" / "ns"
    unpin(PinnedNamespaces(gone / "net", gone / "ipc", gone / "uts"))
    assert not gone.exists()


def test_failed_pin_leaves_nothing(env: Env) -> None:
    with pytest.raises(InvalidArgument, match=r"sysctl net\.ipv4\.no_such does not exist"):
        env.pin("ns", net=True, ipc=True, uts=False, sysctls={"net.ipv4.no_such": "1"})
    with pytest.raises(InvalidArgument, match="kernel refused"):
        env.pin("ns", net=True, sysctls={"net.ipv4.ip_unprivileged_port_start": "notanumber"})
    assert mounts_under(env.tmp / "ns") == []
    assert list((env.tmp / "ns").iterdir()) == []


def test_a_new_network_namespace_has_lo_up(env: Env) -> None:
    p = env.pin("lo")
    assert p.net is not None

    def loopback_echo() -> bytes:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=2) as c:
                conn, _ = server.accept()
                with conn:
                    c.sendall(b"ping")
                    return conn.recv(4)

    assert run_in_netns(p.net, loopback_echo) == b"ping"


def test_pinning_twice_is_refused_and_keeps_the_first(env: Env) -> None:
    p = env.pin("ns")
    with pytest.raises(AlreadyExists, match="unpin them first"):
        env.pin("ns")
    assert p.net is not None
    assert run_in_netns(p.net, lambda: socket.if_nameindex()) == [(1, "lo")]


def test_pins_do_not_propagate_to_peer_mounts(env: Env) -> None:
    """The state dir might sit on a shared mount with a peer elsewhere (here: a/ shared,
    b/ a bind of it in the same peer group). The pins must appear under a/ only."""
    a, b = env.tmp / "a", env.tmp / "b"
    a.mkdir()
    b.mkdir()
    ns.mount(str(a), str(a), None, ns.MS_BIND, None)
    try:
        ns.mount(None, str(a), None, ns.MS_SHARED, None)
        ns.mount(str(a), str(b), None, ns.MS_BIND, None)
        try:
            p = pin_namespaces(a / "pod", net=True, ipc=True, uts=False, hostname=None, sysctls={})
            nsfs = [m for m in mounts_under(b) if m.endswith(("/net", "/ipc"))]
            assert nsfs == []
            assert sorted(mounts_under(a / "pod")) == [
                str(a / "pod"),
                str(a / "pod/ipc"),
                str(a / "pod/net"),
            ]
            unpin(p)
            assert mounts_under(a / "pod") == [] and mounts_under(b) == [str(b)]
        finally:
            ns.umount2(str(b), ns.MNT_DETACH)
    finally:
        ns.umount2(str(a), ns.MNT_DETACH)


def test_pin_and_unpin_do_not_read_the_mount_table(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc/self/mountinfo grows with every pod: a pod start or stop must not read it
    (only an unpin that finds the dir busy may)."""

    def refuse() -> list[str]:
        raise AssertionError("mountinfo read")

    monkeypatch.setattr(namespaces, "_mount_points", refuse)
    p = env.pin("ns", net=True, ipc=True, uts=True)
    assert len(mounts_under(env.tmp / "ns")) == 4
    unpin(p)
    assert mounts_under(env.tmp / "ns") == []


def test_unpin_keeps_the_dir_while_something_is_mounted_under_it(env: Env) -> None:
    p = env.pin("ns")
    extra = env.tmp / "ns" / "extra"
    extra.mkdir()
    ns.mount("tmpfs", str(extra), "tmpfs", 0, "size=4k")
    try:
        unpin(p)
        assert mounts_under(env.tmp / "ns") == [str(env.tmp / "ns"), str(extra)]
    finally:
        ns.umount2(str(extra), 0)
    unpin(p)
    assert mounts_under(env.tmp / "ns") == []


def test_unpin_releases_the_dir_while_a_file_in_it_is_open(env: Env) -> None:
    p = env.pin("ns")
    fd = os.open(env.tmp / "ns", os.O_RDONLY)  # keeps the mount busy
    try:
        unpin(p)
        assert mounts_under(env.tmp / "ns") == []
    finally:
        os.close(fd)


def test_pinning_into_a_mount_point_of_the_callers_leaves_it_mounted(env: Env) -> None:
    d = env.tmp / "ns"
    d.mkdir()
    ns.mount("tmpfs", str(d), "tmpfs", 0, "size=64k")
    try:
        p = env.pin("ns", net=True, ipc=True)
        assert sorted(mounts_under(d)) == [str(d), str(d / "ipc"), str(d / "net")]
        unpin(p)
        assert mounts_under(d) == [str(d)]
    finally:
        ns.umount2(str(d), 0)


# --- CNI -----------------------------------------------------------------------------


async def test_add_reach_and_delete(env: Env) -> None:
    m = env.manager(1)
    p = env.pin("pod")
    assert p.net is not None
    ips = await env.add(m, "plt-sb-a", p.net)
    assert len(ips) == 1 and ips[0].startswith("10.91.1.")
    assert (env.tmp / "cni1/ipam/plt1net" / ips[0]).exists()
    assert nat_rules_naming("plt-sb-a") == []  # the bridge plugin masquerades nothing...
    assert len(nat_rules_naming(chain_name("10.91.1.0/24"))) == 5  # ...podling does
    assert veths_on("plt1")
    assert "lo" in run_in_netns(p.net, lambda: dict(socket.if_nameindex()).values())
    server = PodServer(p.net)
    try:
        assert await asyncio.to_thread(fetch, ips[0], 8080) == b"hello from the pod"
    finally:
        server.close()
    await m.delete("plt-sb-a", p.net)
    assert not (env.tmp / "cni1/ipam/plt1net" / ips[0]).exists()
    assert nat_rules_naming(chain_name("10.91.1.0/24")) == []  # its last pod is gone
    assert veths_on("plt1") == ""
    assert not (env.tmp / "cni1/cache/plt-sb-a.json").exists()
    await m.delete("plt-sb-a", p.net)  # twice is fine


async def test_one_masquerade_chain_for_the_subnet_while_pods_use_it(env: Env) -> None:
    m = env.manager(1)
    a, b = env.pin("a"), env.pin("b")
    assert a.net is not None and b.net is not None
    await env.add(m, "plt-sb-m1", a.net)
    await env.add(m, "plt-sb-m2", b.net)
    assert len(nat_rules_naming(chain_name("10.91.1.0/24"))) == 5  # not one per pod
    await m.delete("plt-sb-m1", a.net)
    assert len(nat_rules_naming(chain_name("10.91.1.0/24"))) == 5
    restarted = env.manager(1)  # a daemon restart: the chain is kept for the pod left
    await restarted.start()
    assert len(nat_rules_naming(chain_name("10.91.1.0/24"))) == 5
    await restarted.delete("plt-sb-m2", b.net)
    assert nat_rules_naming(chain_name("10.91.1.0/24")) == []


async def test_traffic_leaving_the_subnet_is_masqueraded(env: Env) -> None:
    # "outside": a netns of this test behind a veth of the host (10.92.0.1/30 on the
    # host, 10.92.0.2/30 inside), with no route back to the pods' subnet: an answer
    # arrives only if the pod's address was masqueraded to the host's
    m = env.manager(1)
    pod, outside = env.pin("pod"), env.pin("outside")
    assert pod.net is not None and outside.net is not None
    inside = ("nsenter", f"--net={outside.net}", "ip")
    env.links.append("plt-out")
    peer = ("peer", "name", "plt-out", "netns", str(os.getpid()))  # the host's netns
    run(*inside, "link", "add", "plt-out-in", "type", "veth", *peer)
    run(*inside, "addr", "add", "10.92.0.2/30", "dev", "plt-out-in")
    run(*inside, "link", "set", "plt-out-in", "up")
    run("ip", "addr", "add", "10.92.0.1/30", "dev", "plt-out")
    run("ip", "link", "set", "plt-out", "up")
    await env.add(m, "plt-sb-out", pod.net)
    server = PodServer(outside.net, reply=None)  # answers with the address it sees
    try:
        seen = run_in_netns(pod.net, lambda: fetch("10.92.0.2", 8080))
    finally:
        server.close()
    assert seen == b"10.92.0.1"


async def test_port_mapping_on_localhost(env: Env) -> None:

    m = env.manager(2)
    p = env.pin("pod")
    assert p.net is not None
    port = free_port()
    await env.add(m, "plt-sb-pm", p.net, [PortMapping(port, 8080, "tcp", "127.0.0.1")])
    server = PodServer(p.net, reply=b"via hostPort")
    try:
        assert await asyncio.to_thread(fetch, "127.0.0.1", port) == b"via hostPort"
        # what portmap's snat did to make 127.0.0.1 work
        assert Path("/proc/sys/net/ipv4/conf/plt2/route_localnet").read_text().strip() == "1"
        assert any(str(port) in r for r in nat_rules_naming("plt-sb-pm"))
    finally:
        server.close()
    await m.delete("plt-sb-pm", p.net)
    assert nat_rules_naming("plt-sb-pm") == []
    assert not any(f"dport {port}" in r for r in run("iptables-save", "-t", "nat").splitlines())


async def test_delete_after_unpin(env: Env) -> None:
    m = env.manager(1)
    p = env.pin("pod")
    assert p.net is not None
    port = free_port()
    ips = await env.add(m, "plt-sb-gone", p.net, [PortMapping(port, 8080, "tcp", "127.0.0.1")])
    unpin(p)
    await m.delete("plt-sb-gone", p.net)
    assert not (env.tmp / "cni1/ipam/plt1net" / ips[0]).exists()
    assert nat_rules_naming("plt-sb-gone") == []  # portmap's, through a scratch netns
    assert nat_rules_naming(chain_name("10.91.1.0/24")) == []
    assert veths_on("plt1") == ""
    assert mounts_under(env.tmp) == []
    assert sorted(x.name for x in (env.tmp / "cni1/cache").iterdir()) == []


async def test_add_with_missing_plugin_leaves_nothing(env: Env) -> None:
    conf = env.tmp / "conf"
    conf.mkdir()
    (conf / "10-x.conflist").write_text(
        '{"cniVersion": "1.0.0", "name": "plt3net", "plugins": '
        '[{"type": "bridge", "bridge": "plt3"}, {"type": "plt-missing"}]}'
    )
    m = env.manager(3, conf_dir=conf)
    p = env.pin("pod")
    assert p.net is not None
    with pytest.raises(Unavailable, match="plt-missing not found in /usr/lib/cni"):
        await env.add(m, "plt-sb-miss", p.net)
    assert run("ip", "-o", "link", "show", "plt3") == ""  # nothing ran
    assert not (env.tmp / "cni3/cache/plt-sb-miss.json").exists()
    assert not m.status()[0] and "plt-missing" in m.status()[1]


@pytest.mark.parametrize(
    ("second", "match"),
    [
        # the bridge and IPAM succeed, the next plugin fails: the rollback DEL undoes them
        (
            '{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such": "1"}}',
            "CNI plugin tuning ADD failed",
        ),
        # IPAM itself fails
        (None, "CNI plugin bridge ADD failed"),
    ],
)
async def test_failed_add_leaves_nothing(env: Env, second: str | None, match: str) -> None:
    conf = env.tmp / "conf"
    conf.mkdir()
    subnet = "10.91.4.0/24" if second else "10.91.4.0/33"
    ipam = f'{{"type": "host-local", "subnet": "{subnet}", "dataDir": "{env.tmp / "ipam"}"}}'
    bridge = (
        f'{{"type": "bridge", "bridge": "plt4", "isGateway": true, "ipMasq": true, "ipam": {ipam}}}'
    )
    plugins = f"[{bridge}, {second}]" if second else f"[{bridge}]"
    (conf / "10-x.conflist").write_text(
        f'{{"cniVersion": "1.0.0", "name": "plt4net", "plugins": {plugins}}}'
    )
    m = env.manager(4, conf_dir=conf)
    p = env.pin("pod")
    assert p.net is not None
    with pytest.raises(Internal, match=match):
        await env.add(m, "plt-sb-fail", p.net)
    assert not (env.tmp / "cni4/cache/plt-sb-fail.json").exists()
    # host-local keeps one file per allocated address (named by the address)
    ipam_dir = env.tmp / "ipam/plt4net"
    allocated = [f.name for f in ipam_dir.iterdir()] if ipam_dir.exists() else []
    assert [a for a in allocated if a.startswith("10.91.")] == []
    if second:  # the bridge did allocate before the next plugin failed
        assert (ipam_dir / "last_reserved_ip.0").exists()
    assert nat_rules_naming("plt-sb-fail") == []
    assert veths_on("plt4") == ""
    assert run_in_netns(p.net, lambda: [n for _, n in socket.if_nameindex()]) == ["lo"]


async def test_two_pods_reach_each_other(env: Env) -> None:
    m = env.manager(1)
    pa, pb = env.pin("a"), env.pin("b")
    assert pa.net is not None and pb.net is not None
    ip_a = (await env.add(m, "plt-sb-1", pa.net))[0]
    ip_b = (await env.add(m, "plt-sb-2", pb.net))[0]
    assert ip_a != ip_b and ip_b.startswith("10.91.1.")
    server = PodServer(pa.net, port=8081, reply=b"from a")
    try:
        got = await asyncio.to_thread(run_in_netns, pb.net, lambda: fetch(ip_a, 8081))
        assert got == b"from a"
    finally:
        server.close()
    await m.delete("plt-sb-1", pa.net)
    await m.delete("plt-sb-2", pb.net)
    assert veths_on("plt1") == ""

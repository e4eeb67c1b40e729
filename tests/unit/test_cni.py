"""CNI: config lists, env/args, results, errors, and the add/delete protocol driven
against fake plugins (Python scripts that log each call), so no root is needed."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from podling.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unavailable,
)
from podling.sandbox.cni import CniManager, DefaultNetwork, PortMapping
from podling.sandbox.cni_config import (
    cni_args,
    default_config_list,
    find_config_file,
    load_config_list,
    plugin_env,
    plugin_error,
    plugin_stdin,
    pod_ips,
    runtime_config,
)
from tests.unit.test_masquerade import FakeIptables

# --- pure pieces ---------------------------------------------------------------------


def test_default_conflist(tmp_path: Path) -> None:
    conf = default_config_list(DefaultNetwork(bridge="plt1", subnet="10.91.0.0/16"), tmp_path)
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "podling"
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "plt1"
    assert bridge["isGateway"] and bridge["hairpinMode"]
    assert bridge["ipMasq"] is False and conf["podlingMasquerade"] == "10.91.0.0/16"
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.91.0.0/16"}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path)
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def test_cni_args() -> None:
    args = cni_args(pod_namespace="ns1", pod_name="web", sandbox_id="abc", pod_uid="u-1")
    assert args == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
    )
    with pytest.raises(InvalidArgument, match="K8S_POD_NAME"):
        cni_args(pod_namespace="ns1", pod_name="a;b=c", sandbox_id="abc", pod_uid="u")


def test_plugin_env() -> None:
    env = plugin_env(
        {"PATH": "/usr/bin", "CNI_COMMAND": "stale", "HOME": "/root"},
        command="ADD",
        container_id="abc",
        netns="/run/x/net",
        ifname="eth0",
        bin_dirs=[Path("/opt/cni/bin"), Path("/usr/lib/cni")],
        args="IgnoreUnknown=1",
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc",
        "CNI_NETNS": "/run/x/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_ARGS": "IgnoreUnknown=1",
    }


def test_runtime_config() -> None:
    rt = runtime_config(
        [
            PortMapping(8080, 80, "tcp"),
            PortMapping(0, 53, "udp"),
            PortMapping(53, 53, "udp", "127.0.0.1"),
        ]
    )
    assert rt == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]
    }
    assert runtime_config([]) == {}
    with pytest.raises(InvalidArgument, match="icmp"):
        runtime_config([PortMapping(1, 1, "icmp")])


def test_plugin_stdin_injects_only_declared_capabilities() -> None:
    conf = {"cniVersion": "1.0.0", "name": "n", "plugins": []}
    rt = {"portMappings": [{"hostPort": 1}]}
    bridge = json.loads(plugin_stdin(conf, {"type": "bridge"}, None, rt))
    assert bridge == {"type": "bridge", "name": "n", "cniVersion": "1.0.0"}
    pm = {"type": "portmap", "capabilities": {"portMappings": True}}
    out = json.loads(plugin_stdin(conf, pm, {"ips": []}, rt))
    assert out["runtimeConfig"] == rt and out["prevResult"] == {"ips": []}
    off = {"type": "portmap", "capabilities": {"portMappings": False}}
    assert "runtimeConfig" not in json.loads(plugin_stdin(conf, off, None, rt))


RESULT_1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "plt1", "mac": "aa:aa:aa:aa:aa:01"},
        {"name": "veth1", "mac": "aa:aa:aa:aa:aa:02"},
        {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": "/run/x/net"},
    ],
    "ips": [
        {"address": "fd00::5/64", "interface": 2},
        {"address": "10.91.0.1/16", "interface": 0},
        {"address": "10.91.0.5/16", "gateway": "10.91.0.1", "interface": 2},
    ],
}


def test_pod_ips_from_results() -> None:
    assert pod_ips(RESULT_1_0, "eth0") == ["10.91.0.5", "fd00::5"]
    assert pod_ips({"ips": [{"address": "10.0.0.2/24"}]}, "eth0") == ["10.0.0.2"]
    assert pod_ips({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/16"}}, "eth0") == ["10.1.0.2"]
    assert pod_ips({}, "eth0") == []
    with pytest.raises(Internal, match="malformed IP"):
        pod_ips({"ips": [{"address": "10.0.0.300/24"}]}, "eth0")


def test_plugin_error_mapping() -> None:
    body = json.dumps(
        {"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "no subnet"}
    )
    err = plugin_error("host-local", "ADD", 1, body.encode(), b"")
    assert isinstance(err, Internal)
    assert err.message == "CNI plugin host-local ADD failed (code 7): bad config: no subnet"
    again = plugin_error("bridge", "ADD", 1, b'{"code": 11, "msg": "busy"}', b"")
    assert isinstance(again, Unavailable) and "busy" in again.message
    raw = plugin_error("portmap", "DEL", 2, b"", b"panic: oops\n")
    assert isinstance(raw, Internal) and "exit status 2): panic: oops" in raw.message


def test_config_files(tmp_path: Path) -> None:
    assert find_config_file(tmp_path / "none") is None
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "20-b.conflist").write_text("{}")
    (tmp_path / "10-a.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "a", "type": "ptp"})
    )
    assert find_config_file(tmp_path) == tmp_path / "10-a.conf"
    conf = load_config_list(tmp_path / "10-a.conf")
    assert conf["name"] == "a" and conf["plugins"] == [
        {"cniVersion": "0.4.0", "name": "a", "type": "ptp"}
    ]
    with pytest.raises(FailedPrecondition, match=r"20-b.conflist is invalid: it has no \"name\""):
        load_config_list(tmp_path / "20-b.conflist")
    (tmp_path / "30-c.conflist").write_text("{not json")
    with pytest.raises(FailedPrecondition, match="cannot be read as JSON"):
        load_config_list(tmp_path / "30-c.conflist")
    bad = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]}
    (tmp_path / "40-d.conflist").write_text(json.dumps(bad))
    with pytest.raises(FailedPrecondition, match="plain file name"):
        load_config_list(tmp_path / "40-d.conflist")


# --- the manager, against fake plugins ------------------------------------------------

FAKE_PLUGIN = """\
import json, os, sys, time
conf = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(conf["log"], "a") as f:
    f.write(json.dumps({"type": os.path.basename(sys.argv[0]), "env": env, "conf": conf}) + "\\n")
cmd = env["CNI_COMMAND"]
if cmd in conf.get("fail", {}):
    print(json.dumps(conf["fail"][cmd]))
    sys.exit(1)
if cmd == "ADD":
    time.sleep(conf.get("sleep", 0))
    result = conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}
    if "ip" in conf:
        result = {
            "cniVersion": conf["cniVersion"],
            "interfaces": [{"name": env["CNI_IFNAME"], "sandbox": env["CNI_NETNS"]}],
            "ips": [{"address": conf["ip"], "interface": 0}],
        }
    print(json.dumps(result))
"""


class Fake:
    """A conf dir, a bin dir of fake plugins, and the log of their calls."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.log"
        self.log.touch()
        for name in ("loopback", "fbridge", "fportmap"):
            self.add_plugin(name)
        self.conf = tmp_path / "conf"
        self.conf.mkdir()
        # no `ip` on PATH: a gone netns is then passed as "" without a scratch netns
        env = {"PATH": str(tmp_path / "nobin")}
        self.iptables = FakeIptables()
        self.manager = CniManager(
            self.conf,
            [self.bin],
            tmp_path / "cache",
            tmp_path / "ipam",
            DefaultNetwork(),
            environ=env,
            masquerade=self.iptables.masquerade(),
        )

    def add_plugin(self, name: str) -> None:
        p = self.bin / name
        p.write_text(f"#!{sys.executable}\n{FAKE_PLUGIN}")
        p.chmod(0o755)

    def write_conf(self, plugins: list[dict[str, Any]], name: str = "10-fake.conflist") -> None:
        for p in plugins:
            p.setdefault("log", str(self.log))
        conf = {"cniVersion": "1.0.0", "name": "fake", "plugins": plugins}
        (self.conf / name).write_text(json.dumps(conf))

    def calls(self) -> list[dict[str, Any]]:
        out = [json.loads(line) for line in self.log.read_text().splitlines()]
        self.log.write_text("")
        return out


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    f = Fake(tmp_path)
    # loopback is its own network; its config is fixed, so the fake plugin logs via a
    # default path: give every plugin config a log by wrapping loopback's binary
    lo = f.bin / "loopback"
    lo.write_text(
        f"#!{sys.executable}\nimport json, sys\nsys.stdin = __import__('io').StringIO("
        f"json.dumps(dict(json.load(sys.stdin), log={str(f.log)!r})))\n{FAKE_PLUGIN}"
    )
    return f


def chain(fake: Fake, **bridge_extra: Any) -> None:
    fake.write_conf(
        [
            {"type": "fbridge", "ip": "10.91.0.7/16", **bridge_extra},
            {"type": "fportmap", "capabilities": {"portMappings": True}},
        ]
    )


async def add(fake: Fake, sid: str = "sb1", netns: Path | None = None) -> Any:
    return await fake.manager.add(
        sid,
        netns or fake.root / "netns",
        pod_name="web",
        pod_namespace="ns1",
        pod_uid="uid-1",
        port_mappings=[PortMapping(18080, 80, "tcp", "127.0.0.1")],
    )


async def test_add_runs_the_chain_on_eth0(fake: Fake) -> None:
    chain(fake)
    result = await add(fake)
    assert result.ips == ["10.91.0.7"]
    assert result.raw["ips"] == [{"address": "10.91.0.7/16", "interface": 0}]
    calls = fake.calls()
    # no loopback plugin: the namespace pinning sets "lo" up itself
    assert [(c["type"], c["env"]["CNI_COMMAND"], c["env"]["CNI_IFNAME"]) for c in calls] == [
        ("fbridge", "ADD", "eth0"),
        ("fportmap", "ADD", "eth0"),
    ]
    env = calls[0]["env"]
    assert env["CNI_CONTAINERID"] == "sb1" and env["CNI_NETNS"] == str(fake.root / "netns")
    assert env["CNI_PATH"] == str(fake.bin)
    assert "K8S_POD_NAME=web" in env["CNI_ARGS"] and "K8S_POD_UID=uid-1" in env["CNI_ARGS"]
    assert calls[0]["conf"]["name"] == "fake" and "prevResult" not in calls[0]["conf"]
    assert "runtimeConfig" not in calls[0]["conf"]
    pm = calls[1]["conf"]
    assert pm["prevResult"] == result.raw
    assert pm["runtimeConfig"]["portMappings"][0]["hostIP"] == "127.0.0.1"
    cached = json.loads((fake.root / "cache" / "sb1.json").read_text())
    assert cached["results"]["eth0"] == result.raw


async def test_delete_uses_cached_config_in_reverse(fake: Fake) -> None:
    chain(fake)
    result = await add(fake)
    fake.calls()
    # the conf dir changes after the pod was wired: DEL must still use what ADD used
    for p in fake.conf.iterdir():
        p.unlink()
    fake.write_conf([{"type": "fother"}], name="00-new.conflist")
    netns = Path("/proc/self/ns/net")  # a live netns file
    await fake.manager.delete("sb1", netns)
    calls = fake.calls()
    assert [(c["type"], c["env"]["CNI_COMMAND"], c["env"]["CNI_IFNAME"]) for c in calls] == [
        ("fportmap", "DEL", "eth0"),
        ("fbridge", "DEL", "eth0"),
    ]
    assert all(c["env"]["CNI_NETNS"] == str(netns) for c in calls)
    assert calls[0]["conf"]["prevResult"] == result.raw
    assert calls[0]["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 18080
    assert not (fake.root / "cache" / "sb1.json").exists()
    await fake.manager.delete("sb1", netns)  # idempotent: nothing cached, nothing run
    assert fake.calls() == []


async def test_delete_with_netns_gone_passes_empty_netns(fake: Fake) -> None:
    chain(fake)
    await add(fake)
    fake.calls()
    await fake.manager.delete("sb1", None)
    assert {c["env"]["CNI_NETNS"] for c in fake.calls()} == {""}


async def test_delete_of_never_added_pod(fake: Fake) -> None:
    await fake.manager.delete("never", None)
    assert fake.calls() == []


async def test_an_empty_cache_means_nothing_to_delete(fake: Fake) -> None:
    # what a power loss can leave of an un-fsync'd cache write: forgotten, not an error
    (fake.root / "cache").mkdir(exist_ok=True)
    (fake.root / "cache" / "cut.json").write_text("")
    await fake.manager.delete("cut", None)
    assert fake.calls() == []
    assert not (fake.root / "cache" / "cut.json").exists()
    (fake.root / "cache" / "bad.json").write_text("{")
    with pytest.raises(Internal, match="unreadable"):
        await fake.manager.delete("bad", None)


async def test_failed_plugin_rolls_back(fake: Fake) -> None:
    fake.write_conf(
        [
            {"type": "fbridge", "ip": "10.91.0.7/16"},
            {
                "type": "fportmap",
                "fail": {"ADD": {"code": 7, "msg": "no chain", "details": "iptables: x"}},
            },
        ]
    )
    with pytest.raises(
        Internal, match=r"CNI plugin fportmap ADD failed \(code 7\): no chain: iptables: x"
    ):
        await add(fake)
    calls = [(c["type"], c["env"]["CNI_COMMAND"]) for c in fake.calls()]
    assert calls[:2] == [("fbridge", "ADD"), ("fportmap", "ADD")]
    assert calls[2:] == [("fportmap", "DEL"), ("fbridge", "DEL")]
    assert list((fake.root / "cache").iterdir()) == []


async def test_missing_plugin_is_unavailable_and_runs_nothing(fake: Fake) -> None:
    fake.write_conf([{"type": "fbridge"}, {"type": "nosuch"}])
    with pytest.raises(Unavailable, match=r"nosuch not found in .*bin"):
        await add(fake)
    assert fake.calls() == []
    assert not (fake.root / "cache").exists() or list((fake.root / "cache").iterdir()) == []


async def test_timeout_is_deadline_exceeded(fake: Fake) -> None:
    fake.manager._timeout = 0.5
    chain(fake, sleep=30)
    with pytest.raises(DeadlineExceeded, match=r"fbridge ADD .* within 0\.5 s"):
        await add(fake)
    # the rollback DEL ran too (without sleeping: the fake sleeps on ADD only)
    assert ("fbridge", "DEL") in [(c["type"], c["env"]["CNI_COMMAND"]) for c in fake.calls()]
    assert list((fake.root / "cache").iterdir()) == []


async def test_failed_delete_keeps_the_cache_for_a_retry(fake: Fake) -> None:
    chain(fake)
    await add(fake)
    cache = fake.root / "cache" / "sb1.json"
    record = json.loads(cache.read_text())
    record["networks"][0]["config"]["plugins"][1]["fail"] = {"DEL": {"code": 5, "msg": "io"}}
    cache.write_text(json.dumps(record))
    fake.calls()
    with pytest.raises(Internal, match="fportmap DEL failed"):
        await fake.manager.delete("sb1", None)
    # it went on past the failure to free the rest
    assert [c["type"] for c in fake.calls()] == ["fportmap", "fbridge"]
    assert cache.exists()
    del record["networks"][0]["config"]["plugins"][1]["fail"]
    cache.write_text(json.dumps(record))
    await fake.manager.delete("sb1", None)
    assert not cache.exists()


async def test_add_twice_and_bad_ids(fake: Fake) -> None:
    chain(fake)
    await add(fake)
    with pytest.raises(AlreadyExists, match="delete it first"):
        await add(fake)
    with pytest.raises(InvalidArgument, match="not a safe file name"):
        await add(fake, sid="../x")


async def test_default_config_is_written_and_logged(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    ready, msg = fake.manager.status()
    assert not ready and "no CNI network config" in msg
    with caplog.at_level(logging.INFO, logger="podling.sandbox.cni"):
        path = fake.manager.ensure_config()
    assert path == fake.conf / "10-podling.conflist"
    assert "wrote the default network" in caplog.text and str(path) in caplog.text
    assert json.loads(path.read_text())["plugins"][0]["bridge"] == "podling0"
    ready, msg = fake.manager.status()
    assert msg == f"CNI plugin binaries missing from {fake.bin}: bridge, host-local, portmap"
    mtime = os.stat(path).st_mtime_ns
    assert fake.manager.ensure_config() == path and os.stat(path).st_mtime_ns == mtime


async def test_status_ready(fake: Fake) -> None:
    chain(fake)
    assert fake.manager.status() == (
        True,
        f"CNI network 'fake' from {fake.conf / '10-fake.conflist'}",
    )
    (fake.bin / "fportmap").unlink()
    ready, msg = fake.manager.status()
    assert not ready and msg.endswith(": fportmap")


# --- podling's masquerading (podlingMasquerade in the conflist) ---------------------


def masquerading_chain(fake: Fake, subnet: object = "10.91.0.0/16") -> None:
    chain(fake)
    path = fake.conf / "10-fake.conflist"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), podlingMasquerade=subnet)))


async def test_pods_hold_the_masquerade_chain_from_add_to_delete(fake: Fake) -> None:
    masquerading_chain(fake)
    await add(fake, "sb1")
    await add(fake, "sb2")
    assert fake.iptables.take() == ["iptables-restore --noflush", "iptables -C", "iptables -A"]
    await fake.manager.delete("sb1", None)
    assert fake.iptables.take() == []
    await fake.manager.delete("sb2", None)
    assert fake.iptables.take() == ["iptables -D", "iptables -F", "iptables -X"]


async def test_a_failed_add_releases_its_hold(fake: Fake) -> None:
    masquerading_chain(fake)
    await add(fake, "sb1")
    fake.iptables.take()
    path = fake.conf / "10-fake.conflist"
    doc = json.loads(path.read_text())
    doc["plugins"][1]["fail"] = {"ADD": {"code": 7, "msg": "no chain"}}
    path.write_text(json.dumps(doc))
    with pytest.raises(Internal, match="no chain"):
        await add(fake, "sb2")
    assert fake.iptables.take() == []  # sb1 still holds it
    await fake.manager.delete("sb1", None)
    assert fake.iptables.take() == ["iptables -D", "iptables -F", "iptables -X"]


async def test_start_counts_the_pods_in_the_cache(fake: Fake) -> None:
    masquerading_chain(fake)
    await add(fake, "sb1")
    fresh = FakeIptables()
    restarted = CniManager(
        fake.conf,
        [fake.bin],
        fake.root / "cache",
        fake.root / "ipam",
        DefaultNetwork(),
        environ={"PATH": str(fake.root / "nobin")},
        masquerade=fresh.masquerade(),
    )
    await restarted.start()
    assert "iptables-restore --noflush" in fresh.take()  # made sure of for sb1
    await restarted.delete("sb1", None)
    assert fresh.take() == ["iptables -D", "iptables -F", "iptables -X"]


async def test_a_bad_masquerade_subnet_is_refused_before_anything_runs(fake: Fake) -> None:
    masquerading_chain(fake, "10.91.0.0/33")
    with pytest.raises(FailedPrecondition, match=r"podlingMasquerade '10\.91\.0\.0/33'"):
        await add(fake, "sb1")
    assert fake.calls() == [] and fake.iptables.take() == []

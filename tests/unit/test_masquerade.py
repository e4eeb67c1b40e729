"""podling's one masquerade chain per subnet (sandbox/masquerade.py), on a fake iptables:
what runs when (the CNI manager's part is in test_cni.py)."""

from __future__ import annotations

import subprocess

import pytest

from podling.errors import FailedPrecondition
from podling.sandbox.masquerade import Masquerade, chain_name

NET = "10.91.0.0/16"


class FakeIptables:
    """Records the commands; `nat` is what `-S POSTROUTING` would list (`-C` finds its
    rules there); `fail` makes the commands of that tool fail."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.nat = ""
        self.fail = ""

    def masquerade(self) -> Masquerade:
        return Masquerade(self.run, lambda tool: f"/usr/sbin/{tool}")

    def run(self, cmd: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.commands.append(cmd if stdin is None else [*cmd, stdin])
        if "-C" in cmd:  # the jump is there if `nat` lists its chain
            return subprocess.CompletedProcess(cmd, 0 if cmd[-1] in self.nat else 1, "", "")
        failed = cmd[0].startswith(self.fail) if self.fail else "-D" in cmd
        return subprocess.CompletedProcess(cmd, 1 if failed else 0, "", "no such rule")

    def take(self) -> list[str]:
        """What ran since the last take, as "tool verb" ("iptables -A", ...)."""
        verbs = ("--noflush", "-C", "-A", "-D", "-F", "-X", "-S")
        out = [f"{c[0]} {next(a for a in c if a in verbs)}" for c in self.commands]
        self.commands = []
        return out


async def test_the_first_pod_installs_the_last_removes() -> None:
    ipt = FakeIptables()
    m = ipt.masquerade()
    await m.hold(NET)
    restore = ipt.commands[0]
    assert restore[:3] == ["iptables-restore", "-w", "--noflush"]
    chain = chain_name(NET)
    assert f"-A {chain} -d {NET} -j RETURN\n" in restore[3]
    assert f"-A {chain} -d 224.0.0.0/4 -j RETURN\n-A {chain} -j MASQUERADE\n" in restore[3]
    assert ipt.take() == ["iptables-restore --noflush", "iptables -C", "iptables -A"]
    await m.hold(NET)
    await m.release(NET)
    assert ipt.take() == []  # one pod still holds it
    await m.release(NET)
    assert ipt.take() == ["iptables -D", "iptables -F", "iptables -X"]


async def test_ipv6_subnets_use_ip6tables() -> None:
    ipt = FakeIptables()
    await ipt.masquerade().hold("fd00:91::/64")
    assert "-d ff00::/8 -j RETURN" in ipt.commands[0][3]
    assert [c[0] for c in ipt.commands] == ["ip6tables-restore", "ip6tables", "ip6tables"]


async def test_start_removes_its_own_chain_if_unheld_and_repairs_held_ones() -> None:
    ipt = FakeIptables()
    other = "10.77.0.0/24"
    ipt.nat = "\n".join(
        f'-A POSTROUTING -s {n} -m comment --comment "podling masquerade {n}" -j {chain_name(n)}'
        for n in (NET, other)
    )
    m = ipt.masquerade()
    await m.start([NET, NET], own=other)  # `other`: the conflist's, left by a crash
    removed = [c for c in ipt.commands if "-X" in c]
    assert [c[-1] for c in removed] == [chain_name(other)]
    assert any(c[0] == "iptables-restore" for c in ipt.commands)  # NET made sure of
    ipt.commands = []
    await m.hold(NET)  # installed at start: nothing more to do
    assert ipt.commands == []
    ipt.commands = []
    await ipt.masquerade().start([], own=None)  # not our conflist: other chains stay
    assert ipt.take() == []


async def test_a_failing_iptables_refuses_the_hold_saying_why() -> None:
    ipt = FakeIptables()
    ipt.fail = "iptables-restore"
    m = ipt.masquerade()
    with pytest.raises(FailedPrecondition, match=r"cannot set up masquerading for 10\.91"):
        await m.hold(NET)
    missing = Masquerade(ipt.run, lambda tool: None)
    with pytest.raises(FailedPrecondition, match="iptables not found"):
        await missing.hold(NET)

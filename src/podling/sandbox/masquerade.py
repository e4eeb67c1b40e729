"""One masquerade chain per network instead of one per pod, for podling's default network.

The bridge plugin's `ipMasq` makes a chain per pod: nine iptables execs on ADD and more
on DEL, the larger part of a pod's network set-up on our machines (docs/performance.md,
section 17). The default conflist podling writes turns `ipMasq` off and names its subnet
under the `podlingMasquerade` key instead; podling then keeps one chain for that subnet
in the nat table while any pod on it has networking (after a crash, until the next
start):

    -A POSTROUTING -s SUBNET -m comment --comment "podling masquerade SUBNET" -j CHAIN
    -A CHAIN -d SUBNET -j RETURN
    -A CHAIN -d 224.0.0.0/4 -j RETURN        (ff00::/8 for an IPv6 subnet)
    -A CHAIN -j MASQUERADE

which masquerades what the plugin's per-pod chains do: traffic from a pod to anywhere
outside the subnet but multicast. Operators' own conflists are left as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable

from podling.errors import FailedPrecondition

log = logging.getLogger(__name__)

_COMMENT = "podling masquerade "

Runner = Callable[[list[str], str | None], subprocess.CompletedProcess[str]]


def chain_name(subnet: str) -> str:
    """PODLING-MASQ- and 8 hex digits of the subnet's hash (chain names end at 28 chars)."""
    return "PODLING-MASQ-" + hashlib.sha256(subnet.encode()).hexdigest()[:8].upper()


def _run(cmd: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)


class Masquerade:
    """Counts the pods holding each subnet; installs its chain for the first, removes
    it after the last. iptables runs in a worker thread, one change at a time."""

    def __init__(
        self, run: Runner = _run, which: Callable[[str], str | None] = shutil.which
    ) -> None:
        self._run = run
        self._which = which
        self._users: dict[str, int] = {}
        self._installed: set[str] = set()
        self._lock = asyncio.Lock()

    async def start(self, held: Iterable[str], own: str | None) -> None:
        """At daemon start: `held` names a subnet once per pod that has networking on it,
        `own` the subnet of the network config in use. Held subnets' chains are made sure
        of (a firewall reload may have flushed them); `own`'s is removed if no pod holds
        it (a crash left it). Chains of other subnets, another daemon's, are left alone."""
        async with self._lock:
            self._users = {}
            for subnet in held:
                self._users[subnet] = self._users.get(subnet, 0) + 1
            await asyncio.to_thread(self._reconcile, own)

    async def hold(self, subnet: str) -> None:
        """A pod is about to get networking on `subnet`: its chain exists on return."""
        async with self._lock:
            if subnet not in self._installed:
                await asyncio.to_thread(self._install, subnet)
                self._installed.add(subnet)
            self._users[subnet] = self._users.get(subnet, 0) + 1

    async def release(self, subnet: str) -> None:
        """A pod's networking on `subnet` is gone; the last one takes the chain along."""
        async with self._lock:
            left = self._users.get(subnet, 0) - 1
            if left > 0:
                self._users[subnet] = left
                return
            self._users.pop(subnet, None)
            self._installed.discard(subnet)
            await asyncio.to_thread(self._remove, subnet)

    # --- iptables (in a worker thread)

    def _reconcile(self, own: str | None) -> None:
        if own is not None and own not in self._users:
            tool, _ = _family(own)
            if self._which(tool) is not None and self._jump_exists(tool, own):
                self._remove(own)
        for subnet in self._users:
            self._install(subnet)
            self._installed.add(subnet)

    def _install(self, subnet: str) -> None:
        tool, multicast = _family(subnet)
        if self._which(tool) is None:
            raise FailedPrecondition(
                f"{tool} not found: podling's default network masquerades pod traffic "
                f"with it (install the iptables package, or use a CNI config of your own)"
            )
        chain, jump = chain_name(subnet), _jump(subnet)
        rules = (
            f"*nat\n:{chain} - [0:0]\n-F {chain}\n-A {chain} -d {subnet} -j RETURN\n"
            f"-A {chain} -d {multicast} -j RETURN\n-A {chain} -j MASQUERADE\nCOMMIT\n"
        )
        self._check(self._run([f"{tool}-restore", "-w", "--noflush"], rules), subnet)
        if not self._jump_exists(tool, subnet):
            self._check(self._run([tool, "-w", "-t", "nat", "-A", *jump], None), subnet)
        log.info("masquerading traffic from %s to outside it (chain %s)", subnet, chain)

    def _remove(self, subnet: str) -> None:
        tool, _ = _family(subnet)
        if self._which(tool) is None:
            return
        chain = chain_name(subnet)
        while self._run([tool, "-w", "-t", "nat", "-D", *_jump(subnet)], None).returncode == 0:
            pass  # every copy of the jump (two daemons racing could add two)
        self._run([tool, "-w", "-t", "nat", "-F", chain], None)
        self._run([tool, "-w", "-t", "nat", "-X", chain], None)
        log.info("no pod left on %s: removed its masquerade chain %s", subnet, chain)

    def _jump_exists(self, tool: str, subnet: str) -> bool:
        return self._run([tool, "-w", "-t", "nat", "-C", *_jump(subnet)], None).returncode == 0

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str], subnet: str) -> None:
        if done.returncode != 0:
            raise FailedPrecondition(
                f"cannot set up masquerading for {subnet}: {' '.join(map(str, done.args))} "
                f"failed: {done.stderr.strip()}"
            )


def _family(subnet: str) -> tuple[str, str]:
    """The iptables tool for `subnet`, and its family's multicast range."""
    if ipaddress.ip_network(subnet, strict=False).version == 6:
        return "ip6tables", "ff00::/8"
    return "iptables", "224.0.0.0/4"


def _jump(subnet: str) -> list[str]:
    comment = _COMMENT + subnet
    chain = chain_name(subnet)
    return ["POSTROUTING", "-s", subnet, "-m", "comment", "--comment", comment, "-j", chain]

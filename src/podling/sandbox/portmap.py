"""Release the portmap plugin's shared iptables chains once no pod uses them.

The portmap plugin creates CNI-HOSTPORT-DNAT / -MASQ / -SETMARK in the nat table (and
jumps to them from PREROUTING, OUTPUT and POSTROUTING) on the first pod with a host
port, and never removes them. podling removes them after a DEL when the DNAT chain has
no rule left: then no pod on the node, ours or another runtime's, maps a host port.
"""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger(__name__)

CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
_JUMPS = (
    ("PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    (
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "CNI portfwd requiring masquerade",
        "-j",
        "CNI-HOSTPORT-MASQ",
    ),
)


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", "-t", "nat", *args], capture_output=True, text=True, check=False
    )


def release_unused_chains() -> bool:
    """Remove the shared chains if no host-port rule is left in them. True if removed."""
    listing = _iptables("-S", CHAINS[0])
    if listing.returncode != 0:
        return False  # no such chain: nothing to release
    if any(line.startswith("-A") for line in listing.stdout.splitlines()):
        return False  # a pod still maps a host port
    for jump in _JUMPS:
        while _iptables("-D", *jump).returncode == 0:
            pass  # a jump added twice (two runtimes racing) goes too
    for chain in CHAINS:
        _iptables("-F", chain)
        _iptables("-X", chain)
    log.info("released portmap's shared iptables chains: no pod maps a host port any more")
    return True

"""The pod's network, handed to one guest: qemu runs in the pod's network namespace with
a tap device, and tc mirred redirects join the pod's eth0 and the tap both ways (the
"tcfilter" model), so the guest's eth0 carries the pod IP and MAC.

Only one guest can own eth0: the first container of a pod that is created claims it (by
adding the ingress qdisc on eth0); later containers of the same pod get loopback only.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from podling.errors import Internal

TAP = "vmtap0"
POD_IF = "eth0"


@dataclass(frozen=True)
class GuestNet:
    netns: str  # the pod's network namespace file
    address: str  # "10.0.0.5/24"
    gateway: str  # "" when there is no default route
    mac: str
    mtu: int
    tap: str = TAP


def _ns(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["nsenter", f"--net={netns}", *cmd], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise Internal(
            f"pod network {netns}: {' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}"
        )
    return proc


def network_path(spec: dict[str, Any]) -> str | None:
    """The network namespace file the spec joins (None: a namespace of its own or none)."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return None


def _read_eth0(netns: str) -> tuple[str, str, int] | None:
    proc = _ns(netns, "ip", "-j", "addr", "show", "dev", POD_IF, check=False)
    if proc.returncode != 0:
        return None
    link = json.loads(proc.stdout)[0]
    for a in link.get("addr_info", []):
        if a.get("family") == "inet":
            return f"{a['local']}/{a['prefixlen']}", str(link["address"]), int(link["mtu"])
    return None


def _gateway(netns: str) -> str:
    routes = json.loads(_ns(netns, "ip", "-j", "route", "show", "default").stdout or "[]")
    return str(routes[0].get("gateway", "")) if routes else ""


def claim(netns: str) -> GuestNet | None:
    """Wire the pod's eth0 to a new tap for a guest; None when the namespace has no IPv4
    eth0 or another guest already owns it."""
    found = _read_eth0(netns)
    if found is None:
        return None
    if _ns(netns, "tc", "qdisc", "add", "dev", POD_IF, "ingress", check=False).returncode:
        return None  # claimed by an earlier guest of this pod
    address, mac, mtu = found
    net = GuestNet(netns, address, _gateway(netns), mac, mtu)
    try:
        _ns(netns, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        _ns(netns, "ip", "link", "set", TAP, "mtu", str(mtu), "up")
        _ns(netns, "tc", "qdisc", "add", "dev", TAP, "ingress")
        for src, dst in ((POD_IF, TAP), (TAP, POD_IF)):
            _ns(netns, "tc", "filter", "add", "dev", src, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
                "dev", dst)  # fmt: skip
    except Internal:
        release(netns)
        raise
    return net


def release(netns: str) -> None:
    """Undo claim(): the tap and both ingress qdiscs go (their filters with them). A
    namespace that is already gone is fine."""
    _ns(netns, "ip", "link", "del", TAP, check=False)
    _ns(netns, "tc", "qdisc", "del", "dev", POD_IF, "ingress", check=False)

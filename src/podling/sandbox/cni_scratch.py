"""A stand-in network namespace for CNI DEL after a pod's own is gone.

Plugins find some of what they made (the bridge's iptables rules, portmap's) by the pod's
addresses in its netns; when that netns is gone, a fresh one holding interfaces with the
cached addresses lets their DEL still find and remove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from podling.sandbox import namespaces, ns_thread
from podling.sandbox.cni_config import sandbox_addresses

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def scratch_netns(
    record: Mapping[str, Any], cache_dir: Path, path_env: str | None
) -> AsyncIterator[str]:
    """A fresh netns holding interfaces with the pod's cached addresses, so
    plugins that find their iptables rules by those addresses can remove them; ""
    (no netns) when there is nothing to replay or `ip` is not installed."""
    ifaces: dict[str, list[str]] = {}
    for net in record["networks"]:
        if net["ifname"] != "lo":
            result = record["results"].get(net["ifname"]) or {}
            ifaces.update(sandbox_addresses(result, net["ifname"]))
    ip_tool = shutil.which("ip", path=path_env)
    if not ifaces or ip_tool is None:
        yield ""
        return
    log.info(
        "pod %s: its netns is gone; replaying %s in a scratch netns for CNI DEL",
        record["sandbox_id"],
        ifaces,
    )
    pin_dir = cache_dir / f"{record['sandbox_id']}.scratch"
    pinned = await asyncio.to_thread(
        namespaces.pin_namespaces,
        pin_dir,
        net=True,
        ipc=False,
        uts=False,
        hostname=None,
        sysctls={},
    )
    try:
        assert pinned.net is not None
        await asyncio.to_thread(
            ns_thread.run_in_netns, pinned.net, lambda: _dummies(ip_tool, ifaces)
        )
        yield str(pinned.net)
    finally:
        await asyncio.to_thread(namespaces.unpin, pinned)
        with contextlib.suppress(OSError):
            pin_dir.rmdir()


def _dummies(ip_tool: str, ifaces: Mapping[str, list[str]]) -> None:
    """In the current thread's netns: one interface per name, with its addresses. A veth
    pair, as the dummy driver is not always built (its peer is never used)."""
    for i, (name, addrs) in enumerate(ifaces.items()):
        cmds = [[ip_tool, "link", "add", name, "type", "veth", "peer", "name", f"scratch{i}"]]
        cmds += [[ip_tool, "addr", "add", a, "dev", name] for a in addrs]
        for cmd in cmds:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log.warning("scratch netns: %s failed: %s", " ".join(cmd), done.stderr.strip())

"""The two daemons under test, each on its own socket, dirs, bridge, subnet and cgroups.

Both get the same runc (/usr/sbin/runc, cgroupfs driver), the same CNI plugins
(/usr/lib/cni) with the same conflist (podling's default network on the runtime's own
bridge and subnet: bridge with gateway and hairpin, host-local IPAM, portmap), overlayfs
snapshots, and the loopback registry as the docker.io mirror. Masquerading as podling
does it for its default network: one chain for the subnet, not the bridge plugin's chain
per pod; podlingd makes its own (it writes the default conflist itself), the bench makes
containerd's while containerd runs (containerd ignores the conflist's podlingMasquerade
key). Sandboxes as each runtime does them by default: containerd runs a pause container
per pod (catatonit -P, see images.py); podling pins the pod's namespaces without any
process and runs none for pods that do not share PIDs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.images import PAUSE
from bench.settings import NETS, Net
from podling.sandbox.cni_config import DefaultNetwork, default_config_list
from podling.sandbox.masquerade import Masquerade

RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"


def write_conflist(conf_dir: Path, net: Net, ipam_dir: Path) -> None:
    """podling's default network (sandbox/cni_config.py) on the bench's own bridge/subnet."""
    default = DefaultNetwork(bridge=net.bridge, subnet=net.subnet, name=net.name)
    conf_dir.mkdir(parents=True, exist_ok=True)
    doc = default_config_list(default, ipam_dir)
    (conf_dir / "10-bench.conflist").write_text(json.dumps(doc, indent=1))


class Daemon:
    """A daemon process started from `command()`, serving CRI on `socket`."""

    name = ""

    def __init__(self, base: Path, registry_url: str) -> None:
        self.base = base / self.name
        self.registry_url = registry_url
        self.net = NETS[self.name]
        self.socket = self.base / "cri.sock"
        self.log = self.base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def prepare(self) -> None:
        """Write config files and dirs; the subclasses add their own."""
        self.base.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30) -> None:
        self.prepare()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not start; its log ends with:\n{tail}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after `timeout`; helpers are left to the cleanup sweep."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Podling(Daemon):
    name = "podling"

    def prepare(self) -> None:
        super().prepare()
        config = f"""
[log]
level = "info"
[images.registries."docker.io"]
mirrors = ["{self.registry_url}"]
skip_upstream = true
[runtime]
cgroup_parent = "/{self.net.cgroup_root}"
stop_timeout = 2.0
[network]
cni_conf_dir = "{self.base / "cni"}"
cni_bin_dirs = ["{CNI_BIN}"]
default_bridge = "{self.net.bridge}"
default_subnet = "{self.net.subnet}"
"""
        (self.base / "config.toml").write_text(config)

    def command(self) -> list[str]:
        b = self.base
        return [
            *(sys.executable, "-m", "podling.cli.daemon", "--config", str(b / "config.toml")),
            *("--root", str(b / "root"), "--state", str(b / "state"), "--socket", str(self.socket)),
        ]


class Containerd(Daemon):
    name = "containerd"

    def prepare(self) -> None:
        super().prepare()
        b = self.base
        write_conflist(b / "cni", self.net, b / "ipam")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{b / "root"}"
state = "{b / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[{cri}]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{b / "runc"}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{b / "cni"}"
    max_conf_num = 1
  [{cri}.registry.mirrors."docker.io"]
    endpoint = ["{self.registry_url}"]
"""
        (b / "config.toml").write_text(config)

    def command(self) -> list[str]:
        return ["containerd", "--config", str(self.base / "config.toml")]

    def start(self, timeout: float = 30) -> None:
        asyncio.run(Masquerade().hold(self.net.subnet))  # what podlingd does for its own
        super().start(timeout)

    def stop(self, timeout: float = 20) -> None:
        super().stop(timeout)
        asyncio.run(Masquerade().release(self.net.subnet))

"""Every on-disk location podling uses, derived from the root and state dirs.

Nothing else in the code builds paths under root or state: this keeps the layout in one
place, and lets tests run a whole daemon inside a temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path  # persistent: survives reboots
    state: Path  # run state: tmpfs on a real node
    socket: Path

    @property
    def metadata_db(self) -> Path:
        return self.root / "metadata.db"

    @property
    def content(self) -> Path:
        return self.root / "content"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def root_lock(self) -> Path:
        return self.root / "podlingd.lock"

    @property
    def state_lock(self) -> Path:
        return self.state / "podlingd.lock"

    @property
    def pods(self) -> Path:
        """state/pods/<pod id>/: pinned namespaces, hostname, resolv.conf, hosts, shm."""
        return self.state / "pods"

    def pod_dir(self, pod_id: str) -> Path:
        return self.pods / pod_id

    @property
    def containers(self) -> Path:
        """state/containers/<container id>/: the OCI bundle, conmon's pid and ctl files."""
        return self.state / "containers"

    def bundle(self, cid: str) -> Path:
        return self.containers / cid

    @property
    def exits(self) -> Path:
        """conmon writes each container's exit code here, as a file named by its id."""
        return self.state / "exits"

    @property
    def attach_sockets(self) -> Path:
        return self.state / "attach"

    @property
    def cni_cache(self) -> Path:
        return self.state / "cni" / "cache"

    @property
    def ipam(self) -> Path:
        return self.state / "cni" / "ipam"

    @property
    def infra_rootfs(self) -> Path:
        return self.state / "infra-rootfs"

    def ensure(self) -> None:
        """Create the directories podling owns (0700: image content may hold secrets)."""
        dirs = (
            self.root,
            self.state,
            self.content,
            self.snapshots,
            self.socket.parent,
            self.pods,
            self.containers,
            self.exits,
            self.attach_sockets,
            self.cni_cache,
            self.ipam,
        )
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

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

    def ensure(self) -> None:
        """Create the directories podling owns (0700: image content may hold secrets)."""
        for d in (self.root, self.state, self.content, self.snapshots, self.socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

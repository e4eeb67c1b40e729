"""A container's state dir under the runtime root: ROOT/ID holds state.json, the `start`
fifo the launcher blocks on, a `started` marker, the guest share (guest/), console.log
and the agent socket.

Status is derived, as runc does: the launcher pid (checked against its start time, so a
reused pid does not count) alive and `started` present → running; alive without it →
created; gone or a zombie → stopped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from podling.errors import NotFound


@dataclass
class Record:
    id: str
    bundle: str
    pid: int = 0
    starttime: int = 0
    created: str = ""
    netns: str = ""  # set when this guest owns the pod's eth0 (net.claim)
    annotations: dict[str, str] = field(default_factory=dict)


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Container:
    def __init__(self, root: Path, cid: str) -> None:
        if not cid or "/" in cid or cid.startswith("."):
            raise NotFound(f"container id {cid!r} is not valid")
        self.id = cid
        self.dir = root / cid

    @property
    def fifo(self) -> Path:
        return self.dir / "start"

    @property
    def started(self) -> Path:
        return self.dir / "started"

    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    def load(self) -> Record:
        try:
            doc = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"container {self.id} does not exist") from None
        return Record(**doc)

    def save(self, rec: Record) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(self.dir / "state.json")

    def alive(self, rec: Record) -> bool:
        return rec.pid > 0 and proc_starttime(rec.pid) == rec.starttime

    def status(self, rec: Record) -> str:
        if not self.alive(rec):
            return "stopped"
        return "running" if self.started.exists() else "created"

    def oci_state(self) -> dict[str, Any]:
        """The OCI runtime-spec state document."""
        rec = self.load()
        status = self.status(rec)
        return {
            "ociVersion": "1.0.2",
            "id": rec.id,
            "status": status,
            "pid": rec.pid if status != "stopped" else 0,
            "bundle": rec.bundle,
            "rootfs": os.path.join(rec.bundle, "rootfs"),
            "created": rec.created,
            "annotations": rec.annotations,
        }

"""A pod's user namespace (`hostUsers: false`): its id mappings, checked once at
RunPodSandbox and reused by every container of the pod.

The kubelet allocates each such pod a range of host ids and sends it as
`namespace_options.userns_options` (mode POD, uids and gids: container id -> host id,
length). podling then gives the pod a user namespace of its own with those mappings
(pinned beside its network/IPC/UTS namespaces, which it owns), runs every container in
it, and shows the image layers to it through id-mapped mounts, so a file owned by root
in the image is owned by the container's root, without copying or chowning a layer.

Refused (INVALID_ARGUMENT), before anything is made: mode POD without mappings, a
mapping of length 0 or beyond 2^32, overlapping ranges, container id 0 unmapped (the
container's root would own nothing), host id 0 mapped (the container's root would be the
host's root), host network/IPC/PID together with a user namespace, and mappings with
mode NODE.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument

_ID_LIMIT = 1 << 32
# the kernel takes at most this many lines in a uid_map / gid_map
_MAX_LINES = 340


@dataclass(frozen=True)
class IdRange:
    """container ids [container_id, container_id+length) are host ids from host_id."""

    container_id: int
    host_id: int
    length: int

    def host_of(self, container_id: int) -> int | None:
        offset = container_id - self.container_id
        return self.host_id + offset if 0 <= offset < self.length else None


@dataclass(frozen=True)
class UserNamespace:
    """The uid and gid mappings of a pod's user namespace."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    def root(self) -> tuple[int, int]:
        """The host uid and gid of the container's root (mapped: checked on creation)."""
        uid = next(h for r in self.uids if (h := r.host_of(0)) is not None)
        gid = next(h for r in self.gids if (h := r.host_of(0)) is not None)
        return uid, gid

    def oci(self) -> dict[str, list[dict[str, int]]]:
        """linux.uidMappings / linux.gidMappings of an OCI spec."""
        return {
            "uidMappings": [_oci_range(r) for r in self.uids],
            "gidMappings": [_oci_range(r) for r in self.gids],
        }

    def uid_map(self) -> str:
        """The text for /proc/<pid>/uid_map."""
        return _proc_map(self.uids)

    def gid_map(self) -> str:
        return _proc_map(self.gids)

    def to_record(self) -> dict[str, Any]:
        return {
            "uids": [[r.container_id, r.host_id, r.length] for r in self.uids],
            "gids": [[r.container_id, r.host_id, r.length] for r in self.gids],
        }

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> UserNamespace:
        return cls(tuple(IdRange(*r) for r in raw["uids"]), tuple(IdRange(*r) for r in raw["gids"]))


def _oci_range(r: IdRange) -> dict[str, int]:
    return {"containerID": r.container_id, "hostID": r.host_id, "size": r.length}


def _proc_map(ranges: tuple[IdRange, ...]) -> str:
    return "".join(f"{r.container_id} {r.host_id} {r.length}\n" for r in ranges)


def pod_user_namespace(config: pb.PodSandboxConfig) -> UserNamespace | None:
    """The pod's user namespace, checked; None when it shares the host's (no
    userns_options, or mode NODE). Raises InvalidArgument naming the field to fix."""
    opts = config.linux.security_context.namespace_options
    if not opts.HasField("userns_options"):
        return None
    userns = opts.userns_options
    field = "linux.security_context.namespace_options.userns_options"
    if userns.mode == pb.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{field}: mode NODE takes no uids/gids mappings")
        return None
    if userns.mode != pb.POD:
        raise InvalidArgument(f"{field}.mode must be POD or NODE")
    for kind, mode in (("network", opts.network), ("ipc", opts.ipc), ("pid", opts.pid)):
        if mode == pb.NODE:
            raise InvalidArgument(
                f"{field}: a pod with its own user namespace cannot use the host's {kind} "
                f"namespace (namespace_options.{kind} NODE): drop one of the two"
            )
    return UserNamespace(
        _ranges(userns.uids, f"{field}.uids"), _ranges(userns.gids, f"{field}.gids")
    )


def _ranges(mappings: Sequence[pb.IDMapping], field: str) -> tuple[IdRange, ...]:
    if not mappings:
        raise InvalidArgument(f"{field}: mode POD needs at least one mapping")
    if len(mappings) > _MAX_LINES:
        raise InvalidArgument(f"{field}: at most {_MAX_LINES} mappings (the kernel's limit)")
    ranges = tuple(IdRange(m.container_id, m.host_id, m.length) for m in mappings)
    for i, r in enumerate(ranges):
        where = f"{field}[{i}]"
        if r.length == 0:
            raise InvalidArgument(f"{where}: length must be > 0")
        if r.container_id + r.length > _ID_LIMIT or r.host_id + r.length > _ID_LIMIT:
            raise InvalidArgument(f"{where}: the range goes beyond id 2^32-1")
        if r.host_id == 0:
            raise InvalidArgument(
                f"{where}: maps host id 0 into the pod; the container's ids must come "
                "from a range that leaves out the host's root"
            )
    _no_overlap(ranges, field, lambda r: r.container_id, "container")
    _no_overlap(ranges, field, lambda r: r.host_id, "host")
    if not any(r.host_of(0) is not None for r in ranges):
        raise InvalidArgument(f"{field}: container id 0 (the container's root) is not mapped")
    return ranges


def _no_overlap(
    ranges: tuple[IdRange, ...], field: str, start: Callable[[IdRange], int], side: str
) -> None:
    spans = sorted((start(r), start(r) + r.length) for r in ranges)
    for (_, end), (nxt, _) in pairwise(spans):
        if nxt < end:
            raise InvalidArgument(f"{field}: the {side} id ranges overlap at id {nxt}")


def check_searchable(path: Path) -> None:
    """FailedPrecondition unless every existing dir from / down to `path` lets others
    search it (o+x): the runtime, inside the pod's user namespace, opens the container's
    root filesystem and the pod's files as an unprivileged host uid (containerd keeps its
    state dirs 0711 for the same reason)."""
    for d in (*reversed(path.parents), path):
        try:
            mode = os.stat(d).st_mode
        except FileNotFoundError:
            return  # made later by podling itself, with o+x
        if not mode & stat.S_IXOTH:
            raise FailedPrecondition(
                f"{d} (mode {stat.S_IMODE(mode):04o}) is not searchable by others, so the "
                f"root of a pod with a user namespace cannot reach its files under {path}: "
                f"chmod o+x {d}, or move podling's state dir"
            )

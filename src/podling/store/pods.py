"""Pod sandbox and container records in the metadata store.

A record is written *before* its side effects (state "creating") and updated as steps
complete, so after a crash the daemon knows every pod and container it may have left
half-made and can clean them up (services/recovery.py).

Each record is a dataclass: the columns hold what is filtered on or must be unique, the
CRI config is kept as the proto's bytes, and the remaining fields travel as JSON in `doc`.

Reads are served from memory: every record is written through PodStore, so PodStore
keeps a copy of each table (loaded on first read, updated on each committed write) and
status/list polls cost neither a query nor a JSON decode (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import json
import operator
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from podling.errors import AlreadyExists
from podling.store.metadata import MetadataStore

# pod states
POD_CREATING, POD_READY, POD_NOTREADY = "creating", "ready", "notready"
# container states
CT_CREATING, CT_CREATED, CT_RUNNING, CT_EXITED = "creating", "created", "running", "exited"


@dataclass
class PodRecord:
    id: str
    reservation: str
    state: str
    created_ns: int
    config: bytes  # PodSandboxConfig, serialized
    runtime_handler: str = ""
    pod_dir: str = ""
    namespaces: dict[str, str] = field(default_factory=dict)  # kind → pinned path
    ips: list[str] = field(default_factory=list)
    cni_result: dict[str, Any] = field(default_factory=dict)
    cgroup_parent: str = ""
    infra_id: str = ""
    infra_pid: int = 0
    shm_path: str = ""


@dataclass
class ContainerRecord:
    id: str
    pod_id: str
    reservation: str
    state: str
    created_ns: int
    config: bytes  # ContainerConfig, serialized
    image: str = ""  # the image as the caller named it
    image_id: str = ""
    bundle: str = ""
    snapshot: str = ""
    rootfs: str = ""
    log_path: str = ""
    pid: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    stop_signal: str = "SIGTERM"
    mounts: list[dict[str, Any]] = field(default_factory=list)  # CRI mounts as applied (JSON)
    runtime_handler: str = ""


R = TypeVar("R", PodRecord, ContainerRecord)
_COLUMNS = {"id", "pod_id", "reservation", "state", "created_ns", "config"}


def _doc(rec: PodRecord | ContainerRecord) -> str:
    return json.dumps({k: v for k, v in dataclasses.asdict(rec).items() if k not in _COLUMNS})


def _clone(rec: R) -> R:
    """A copy the caller may change freely: its lists and dicts are its own (one level
    deep; nested values such as cni_result's are only ever replaced, never edited)."""
    # what copy.copy does, without its generic protocol (a third of a 100-record list)
    new: R = object.__new__(type(rec))
    new.__dict__.update(rec.__dict__)
    if isinstance(new, PodRecord):
        new.namespaces = dict(new.namespaces)
        new.ips = list(new.ips)
        new.cni_result = dict(new.cni_result)
    else:
        new.mounts = [dict(m) for m in new.mounts]
    return new


def _ordered(recs: Iterator[R], shared: bool) -> list[R]:
    """Oldest first (the order the tables are listed in): copies, or with `shared` the
    cached records themselves (see PodStore.pods)."""
    out = list(recs) if shared else [_clone(r) for r in recs]
    out.sort(key=_created)
    return out


_created = operator.attrgetter("created_ns")


def _load(cls: type[R], row: sqlite3.Row | tuple[Any, ...], names: list[str]) -> R:
    values = dict(zip(names, row, strict=True))
    values.update(json.loads(values.pop("doc")))
    values["config"] = bytes(values["config"])
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


class PodStore:
    """Pods and containers, on the shared metadata database, with reads from memory.

    Contract: nothing else writes the pods and containers tables (true since this is
    their only writer), so the in-memory copy equals the committed rows. Every record
    returned is the caller's own copy, unless asked for shared ones. `generation` grows
    with every write to either table: equal generations, equal contents. Safe to use
    from several threads.
    """

    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta
        # Held across a write and its cache update, and across a cache load: so the
        # cache sees commits in their order and never loads rows older than a write.
        self._lock = threading.RLock()
        self._pods: dict[str, PodRecord] | None = None
        self._cts: dict[str, ContainerRecord] | None = None
        self.generation = 0

    # ---- pods ----------------------------------------------------------------------------

    def insert_pod(self, rec: PodRecord) -> None:
        """AlreadyExists if another pod holds the same name reservation."""
        try:
            with self._inserting(self._pod_table, rec) as c:
                c.execute(
                    "INSERT INTO pods (id, reservation, state, created_ns, config, doc)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (rec.id, rec.reservation, rec.state, rec.created_ns, rec.config, _doc(rec)),
                )
        except sqlite3.IntegrityError as e:
            holder = self._holder("pods", "reservation = ?", (rec.reservation,))
            raise AlreadyExists(
                f"pod name {rec.reservation!r} is already reserved by pod {holder}; remove it "
                "first or use another attempt number"
            ) from e

    def update_pod(self, rec: PodRecord) -> None:
        with self._writing(self._pod_table, rec.id, rec) as c:
            c.execute(
                "UPDATE pods SET state = ?, doc = ? WHERE id = ?", (rec.state, _doc(rec), rec.id)
            )

    def get_pod(self, pod_id: str, shared: bool = False) -> PodRecord | None:
        """A copy of the pod's record; with `shared`, the cached record (see pods())."""
        with self._lock:
            rec = self._pod_table().get(pod_id)
            return _clone(rec) if rec is not None and not shared else rec

    def pods(self, shared: bool = False) -> list[PodRecord]:
        """Every pod, oldest first. Copies the caller may change; or, with `shared`, the
        cached records themselves, which nobody may change (a write replaces a cached
        record, never edits it): for readers of every record, as the kubelet's polls are,
        where the copies were most of the cost."""
        with self._lock:
            return _ordered(iter(self._pod_table().values()), shared)

    def delete_pod(self, pod_id: str) -> None:
        with self._writing(self._pod_table, pod_id, None) as c:
            c.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    # ---- containers ----------------------------------------------------------------------

    def insert_container(self, rec: ContainerRecord) -> None:
        """AlreadyExists if the pod already has a container of that name and attempt."""
        try:
            with self._inserting(self._ct_table, rec) as c:
                c.execute(
                    "INSERT INTO containers (id, pod_id, reservation, state, created_ns, config,"
                    " doc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.id,
                        rec.pod_id,
                        rec.reservation,
                        rec.state,
                        rec.created_ns,
                        rec.config,
                        _doc(rec),
                    ),
                )
        except sqlite3.IntegrityError as e:
            holder = self._holder(
                "containers", "pod_id = ? AND reservation = ?", (rec.pod_id, rec.reservation)
            )
            raise AlreadyExists(
                f"container name {rec.reservation!r} is already in use in pod {rec.pod_id} by "
                f"container {holder}; remove it or use another attempt number"
            ) from e

    def update_container(self, rec: ContainerRecord) -> None:
        with self._writing(self._ct_table, rec.id, rec) as c:
            c.execute(
                "UPDATE containers SET state = ?, doc = ? WHERE id = ?",
                (rec.state, _doc(rec), rec.id),
            )

    def get_container(self, cid: str, shared: bool = False) -> ContainerRecord | None:
        """A copy of the container's record; with `shared`, the cached record."""
        with self._lock:
            rec = self._ct_table().get(cid)
            return _clone(rec) if rec is not None and not shared else rec

    def containers(self, pod_id: str | None = None, shared: bool = False) -> list[ContainerRecord]:
        """The containers (of `pod_id`, if given), oldest first; `shared` as for pods()."""
        with self._lock:
            recs = iter(self._ct_table().values())
            if pod_id is None:
                return _ordered(recs, shared)
            return _ordered((r for r in recs if r.pod_id == pod_id), shared)

    def delete_container(self, cid: str) -> None:
        with self._writing(self._ct_table, cid, None) as c:
            c.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def resolve_id(self, table: str, ref: str) -> str | None:
        """The full id `ref` names in `table`: itself, or the one id it is a prefix of."""
        with self._lock:
            if ref in self._ids(table):
                return ref
            matches = self.ids_with_prefix(table, ref)
            return matches[0] if len(matches) == 1 else None

    def ids_with_prefix(self, table: str, prefix: str) -> list[str]:
        with self._lock:
            return sorted(i for i in self._ids(table) if i.startswith(prefix))

    # ---- helpers -------------------------------------------------------------------------

    def _ids(self, table: str) -> dict[str, Any]:
        assert table in ("pods", "containers")
        return self._pod_table() if table == "pods" else self._ct_table()

    def _pod_table(self) -> dict[str, PodRecord]:
        with self._lock:
            if self._pods is None:
                self._pods = {r.id: r for r in self._select(PodRecord, "pods")}
            return self._pods

    def _ct_table(self) -> dict[str, ContainerRecord]:
        with self._lock:
            if self._cts is None:
                self._cts = {r.id: r for r in self._select(ContainerRecord, "containers")}
            return self._cts

    @contextmanager
    def _inserting(
        self, table: Any, rec: PodRecord | ContainerRecord
    ) -> Iterator[sqlite3.Connection]:
        """An INSERT transaction, then `rec` added to the cache (not if the INSERT fails)."""
        with self._lock:
            with self._meta.tx() as c:
                yield c
            self._cached(table, rec.id, rec, insert=True)

    @contextmanager
    def _writing(
        self, table: Any, rid: str, rec: PodRecord | ContainerRecord | None
    ) -> Iterator[sqlite3.Connection]:
        """A write transaction, then the cache brought to the committed state: `rec`
        replaces the cached record (if it still exists), None removes it."""
        with self._lock:
            with self._meta.tx() as c:
                yield c
            self._cached(table, rid, rec, insert=False)

    def _cached(self, table: Any, rid: str, rec: Any, *, insert: bool) -> None:
        with self._lock:
            self.generation += 1
            cache = table()  # loads the table if needed: it then already has the write
            if rec is None:
                cache.pop(rid, None)
            elif insert or rid in cache:  # an UPDATE of a deleted row changes nothing
                cache[rid] = _clone(rec)

    def _holder(self, table: str, where: str, params: tuple[Any, ...]) -> str:
        rows = self._meta.query(f"SELECT id FROM {table} WHERE {where}", params)
        return str(rows[0][0]) if rows else "?"

    def _select(self, cls: type[R], table: str) -> list[R]:
        names = ["id", "reservation", "state", "created_ns", "config", "doc"]
        if table == "containers":
            names.insert(1, "pod_id")
        rows = self._meta.query(f"SELECT {', '.join(names)} FROM {table}", ())
        return [_load(cls, row, names) for row in rows]

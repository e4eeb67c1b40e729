"""Pod sandbox and container records in the metadata store.

A record is written *before* its side effects (state "creating") and updated as steps
complete, so after a crash the daemon knows every pod and container it may have left
half-made and can clean them up (services/recovery.py).

Each record is a dataclass: the columns hold what is filtered on or must be unique, the
CRI config is kept as the proto's bytes, and the remaining fields travel as JSON in `doc`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
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


def _load(cls: type[R], row: sqlite3.Row | tuple[Any, ...], names: list[str]) -> R:
    values = dict(zip(names, row, strict=True))
    values.update(json.loads(values.pop("doc")))
    values["config"] = bytes(values["config"])
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


class PodStore:
    """Pods and containers, on the shared metadata database."""

    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta

    # ---- pods ----------------------------------------------------------------------------

    def insert_pod(self, rec: PodRecord) -> None:
        """AlreadyExists if another pod holds the same name reservation."""
        try:
            with self._meta.tx() as c:
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
        with self._meta.tx() as c:
            c.execute(
                "UPDATE pods SET state = ?, doc = ? WHERE id = ?", (rec.state, _doc(rec), rec.id)
            )

    def get_pod(self, pod_id: str) -> PodRecord | None:
        rows = self._select(PodRecord, "pods", "id = ?", (pod_id,))
        return rows[0] if rows else None

    def pods(self) -> list[PodRecord]:
        return self._select(PodRecord, "pods", "1", ())

    def delete_pod(self, pod_id: str) -> None:
        with self._meta.tx() as c:
            c.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    # ---- containers ----------------------------------------------------------------------

    def insert_container(self, rec: ContainerRecord) -> None:
        """AlreadyExists if the pod already has a container of that name and attempt."""
        try:
            with self._meta.tx() as c:
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
        with self._meta.tx() as c:
            c.execute(
                "UPDATE containers SET state = ?, doc = ? WHERE id = ?",
                (rec.state, _doc(rec), rec.id),
            )

    def get_container(self, cid: str) -> ContainerRecord | None:
        rows = self._select(ContainerRecord, "containers", "id = ?", (cid,))
        return rows[0] if rows else None

    def containers(self, pod_id: str | None = None) -> list[ContainerRecord]:
        if pod_id is None:
            return self._select(ContainerRecord, "containers", "1", ())
        return self._select(ContainerRecord, "containers", "pod_id = ?", (pod_id,))

    def delete_container(self, cid: str) -> None:
        with self._meta.tx() as c:
            c.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def resolve_id(self, table: str, ref: str) -> str | None:
        """The full id `ref` names in `table`: itself, or the one id it is a prefix of."""
        rows = self._meta.query(f"SELECT id FROM {table} WHERE id = ?", (ref,))
        if rows:
            return str(rows[0][0])
        matches = self.ids_with_prefix(table, ref)
        return matches[0] if len(matches) == 1 else None

    def ids_with_prefix(self, table: str, prefix: str) -> list[str]:
        assert table in ("pods", "containers")
        rows = self._meta.query(
            f"SELECT id FROM {table} WHERE id >= ? AND id < ?", (prefix, prefix + "\uffff")
        )
        return [r[0] for r in rows]

    # ---- helpers -------------------------------------------------------------------------

    def _holder(self, table: str, where: str, params: tuple[Any, ...]) -> str:
        rows = self._meta.query(f"SELECT id FROM {table} WHERE {where}", params)
        return str(rows[0][0]) if rows else "?"

    def _select(self, cls: type[R], table: str, where: str, params: tuple[Any, ...]) -> list[R]:
        names = ["id", "reservation", "state", "created_ns", "config", "doc"]
        if table == "containers":
            names.insert(1, "pod_id")
        rows = self._meta.query(
            f"SELECT {', '.join(names)} FROM {table} WHERE {where} ORDER BY created_ns", params
        )
        return [_load(cls, row, names) for row in rows]

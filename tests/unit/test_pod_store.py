"""PodStore's listings: copies by default, the cached records themselves when shared."""

from __future__ import annotations

from pathlib import Path

from podling.store.metadata import open_store
from podling.store.pods import PodStore
from tests.unit.test_reply_cache import ct_rec, pod_rec


def store_with(tmp_path: Path, n: int) -> PodStore:
    store = PodStore(open_store(tmp_path / "meta.db"))
    for i in reversed(range(n)):  # inserted newest first: listings still go oldest first
        pod = pod_rec(i)
        store.insert_pod(pod)
        store.insert_container(ct_rec(i, pod.id))
    return store


def test_listings_are_copies_the_caller_may_change(tmp_path: Path) -> None:
    store = store_with(tmp_path, 3)
    pods, cts = store.pods(), store.containers()
    pods[0].ips.append("10.9.9.9")
    pods[0].state = "notready"
    cts[0].mounts[0]["hostPath"] = "/changed"
    again, cts_again = store.pods()[0], store.containers()[0]
    assert (again.ips, again.state) == (["10.0.0.0"], "ready")
    assert cts_again.mounts[0]["hostPath"] == "/h0"


def test_shared_listings_are_the_cached_records_oldest_first(tmp_path: Path) -> None:
    store = store_with(tmp_path, 3)
    shared = store.pods(shared=True)
    assert [p.created_ns for p in shared] == [1000, 1001, 1002]
    assert all(a is b for a, b in zip(shared, store.pods(shared=True), strict=True))
    assert all(a is not b for a, b in zip(shared, store.pods(), strict=True))
    cts = store.containers(shared=True)
    assert [c.created_ns for c in cts] == [2000, 2001, 2002]
    assert store.containers(shared[1].id, shared=True) == [cts[1]]


def test_a_write_replaces_a_shared_record_and_never_edits_it(tmp_path: Path) -> None:
    store = store_with(tmp_path, 1)
    held = store.pods(shared=True)[0]
    changed = store.pods()[0]
    changed.state, changed.ips = "notready", []
    store.update_pod(changed)
    assert (held.state, held.ips) == ("ready", ["10.0.0.0"])  # what the reader saw stays
    now = store.pods(shared=True)[0]
    assert now is not held and (now.state, now.ips) == ("notready", [])

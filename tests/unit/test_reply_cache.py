"""The per-record reply caches of the list and status RPCs (api/reply_cache.py).

The API mixins run on a real PodStore (SQLite in tmp_path) with the real Pod and
Container services; records change the way the services change them (store updates),
and each test checks what the next RPC answers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.api import containers as api_ct
from podling.api import pods as api_pods
from podling.api.containers import ContainersApi
from podling.api.pods import PodsApi
from podling.api.reply_cache import ReplyCache, varint
from podling.errors import NotFound
from podling.services.containers import ContainerService
from podling.services.pods import PodService
from podling.store.metadata import open_store
from podling.store.pods import ContainerRecord, PodRecord, PodStore

C = pb.ContainerState
RUNNING, EXITED, CREATED = C.CONTAINER_RUNNING, C.CONTAINER_EXITED, C.CONTAINER_CREATED


class Api(PodsApi, ContainersApi):
    def __init__(self, store: PodStore) -> None:
        deps: Any = SimpleNamespace(store=store, conmon=SimpleNamespace(runtime=None))
        self._containers = ContainerService(deps)
        self._pods = PodService(deps, self._containers)
        self.store = store


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(PodStore(open_store(tmp_path / "meta.db")))


def pod_rec(i: int, state: str = "ready") -> PodRecord:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"p{i}", uid=f"u{i}", namespace="ns"),
        labels={"app": "web" if i % 2 else "db", "n": str(i)},
        annotations={"note": f"pod {i}"},
    )
    return PodRecord(
        id=f"pod{i:03d}" + "a" * 58,
        reservation=f"p{i}",
        state=state,
        created_ns=1000 + i,
        config=cfg.SerializeToString(),
        ips=[f"10.0.0.{i}"],
    )


def ct_rec(i: int, pod_id: str, state: str = "created") -> ContainerRecord:
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=f"c{i}", attempt=1),
        labels={"tier": "front" if i % 2 else "back", "n": str(i)},
        annotations={"hash": f"h{i}"},
    )
    return ContainerRecord(
        id=f"ct{i:03d}" + "b" * 59,
        pod_id=pod_id,
        reservation=f"c{i}",
        state=state,
        created_ns=2000 + i,
        config=cfg.SerializeToString(),
        image="busybox:1",
        image_id="sha256:" + "f" * 64,
        log_path=f"/logs/c{i}.log",
        mounts=[{"containerPath": "/data", "hostPath": f"/h{i}"}],
    )


def populate(api: Api, n: int) -> tuple[list[PodRecord], list[ContainerRecord]]:
    pods = [pod_rec(i) for i in range(n)]
    cts = [ct_rec(i, pods[i].id) for i in range(n)]
    for p, c in zip(pods, cts, strict=True):
        api.store.insert_pod(p)
        api.store.insert_container(c)
    return pods, cts


LCR, CSR, PSR = pb.ListContainersResponse, pb.ContainerStatusResponse, pb.PodSandboxStatusResponse


def parsed(reply: Any, cls: Any) -> Any:
    """A handler's reply as a message (status/list handlers return wire bytes)."""
    return cls.FromString(reply) if isinstance(reply, bytes) else reply


async def list_cts(api: Api, **flt: Any) -> list[pb.Container]:
    req = pb.ListContainersRequest(filter=pb.ContainerFilter(**flt)) if flt else None
    resp = api.ListContainers(req or pb.ListContainersRequest(), None)
    return list(parsed(resp, pb.ListContainersResponse).containers)


async def ct_status(api: Api, cid: str) -> pb.ContainerStatus:
    resp = api.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), None)
    return parsed(resp, pb.ContainerStatusResponse).status


async def list_pods(api: Api, **flt: Any) -> list[pb.PodSandbox]:
    req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**flt)) if flt else None
    resp = api.ListPodSandbox(req or pb.ListPodSandboxRequest(), None)
    return list(parsed(resp, pb.ListPodSandboxResponse).items)


# ---- the wire encoding ---------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**35 + 5])
def test_varint_matches_protobuf(n: int) -> None:
    # a uint64 field 1 is tag 0x08 then the varint: protobuf's own encoding to compare with
    assert pb.UInt64Value(value=n).SerializeToString() == (b"\x08" + varint(n) if n else b"")


def test_a_reply_over_127_bytes_parses_back_whole() -> None:
    rec = ct_rec(1, "p" * 64)
    cache: ReplyCache[ContainerRecord] = ReplyCache(api_ct.ct_status, api_ct.STATUS_FIELDS, 1, list)
    wire = cache.field(rec)
    assert len(wire) > 300  # a two-byte length
    assert pb.ContainerStatusResponse.FromString(wire).status == api_ct.ct_status(rec)


# ---- the keys name every field the builders read ---------------------------------------


def _other(value: Any) -> Any:
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, bytes):
        return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="zz")).SerializeToString()
    if isinstance(value, list):
        return [*value, {"containerPath": "/other"} if isinstance(value[0], dict) else "9.9.9.9"]
    if isinstance(value, dict):
        return {**value, "other": "x"}
    raise AssertionError(f"no other value for {value!r}")


def _status_of(reply: Any) -> Any:
    return lambda wire: reply.FromString(wire).status


BUILDERS = [
    (
        api_ct.ct_status,
        api_ct.STATUS_FIELDS,
        ct_rec(3, "p" * 64, "exited"),
        _status_of(pb.ContainerStatusResponse),
    ),
    (
        api_ct.ct_summary,
        api_ct.SUMMARY_FIELDS,
        ct_rec(3, "p" * 64, "running"),
        lambda wire: pb.ListContainersResponse.FromString(wire).containers[0],
    ),
    (
        api_pods.pod_status,
        api_pods.STATUS_FIELDS,
        pod_rec(3),
        _status_of(pb.PodSandboxStatusResponse),
    ),
    (
        api_pods.pod_summary,
        api_pods.SUMMARY_FIELDS,
        pod_rec(3),
        lambda wire: pb.ListPodSandboxResponse.FromString(wire).items[0],
    ),
]


@pytest.mark.parametrize(("build", "fields", "rec", "parse"), BUILDERS)
def test_builders_read_no_field_outside_their_key(
    build: Any, fields: Any, rec: Any, parse: Any
) -> None:
    """If a builder starts reading a field its cache key lacks, a change of that field
    would be served stale: this fails first."""
    before = build(rec)
    for f in dataclasses.fields(rec):
        if f.name in fields:
            continue
        changed = dataclasses.replace(rec, **{f.name: _other(getattr(rec, f.name))})
        assert build(changed) == before, f"{build.__name__} reads {f.name}, not in its key"


@pytest.mark.parametrize(("build", "fields", "rec", "parse"), BUILDERS)
def test_a_change_of_any_key_field_is_served(build: Any, fields: Any, rec: Any, parse: Any) -> None:
    calls: list[str] = []

    def counted(r: Any) -> Any:
        calls.append(r.id)
        return build(r)

    cache: ReplyCache[Any] = ReplyCache(counted, fields, 1, list)
    assert parse(cache.field(rec)) == build(rec)
    assert parse(cache.field(dataclasses.replace(rec))) == build(rec)  # another object: a hit
    assert len(calls) == 1
    for name in fields:
        if name == "id":
            continue  # another id is another entry
        changed = dataclasses.replace(rec, **{name: _other(getattr(rec, name))})
        assert build(changed) != build(rec), f"the test's new {name} changes nothing"
        assert parse(cache.field(changed)) == build(changed), name
    assert len(calls) == len(fields)


# ---- containers through the RPCs ------------------------------------------------------


async def test_container_state_changes_show_in_the_next_list_and_status(api: Api) -> None:
    _, cts = populate(api, 3)
    rec = cts[1]
    assert (await list_cts(api, id=rec.id))[0].state == CREATED
    assert (await ct_status(api, rec.id)).state == CREATED

    rec.state, rec.started_ns, rec.pid = "running", 5000, 42
    api.store.update_container(rec)
    assert (await list_cts(api, id=rec.id))[0].state == RUNNING
    st = await ct_status(api, rec.id)
    assert (st.state, st.started_at, st.finished_at) == (RUNNING, 5000, 0)

    rec.state, rec.finished_ns, rec.exit_code, rec.reason = "exited", 9000, 137, "OOMKilled"
    api.store.update_container(rec)
    assert (await list_cts(api, id=rec.id))[0].state == EXITED
    st = await ct_status(api, rec.id)
    assert (st.state, st.finished_at, st.exit_code, st.reason) == (EXITED, 9000, 137, "OOMKilled")
    # the state stays, only the exit code and message change (an exit file read late)
    rec.exit_code, rec.message = 1, "read late"
    api.store.update_container(rec)
    st = await ct_status(api, rec.id)
    assert (st.state, st.exit_code, st.message) == (EXITED, 1, "read late")
    # the others were not touched
    assert [c.state for c in await list_cts(api)] == [CREATED, EXITED, CREATED]


async def test_a_removed_container_disappears_and_leaves_no_entry(api: Api) -> None:
    _, cts = populate(api, 4)
    for c in cts:
        await ct_status(api, c.id)
    assert len(await list_cts(api)) == 4
    assert len(api._ct_summaries) == 4 and len(api._ct_statuses) == 4

    api.store.delete_container(cts[2].id)
    listed = await list_cts(api)
    assert [c.id for c in listed] == [cts[0].id, cts[1].id, cts[3].id]
    assert len(api._ct_summaries) == 3 and len(api._ct_statuses) == 3
    with pytest.raises(NotFound):
        await ct_status(api, cts[2].id)


async def test_container_filters_apply_with_the_cache_warm(api: Api) -> None:
    pods, cts = populate(api, 6)
    cts[0].state = "running"
    api.store.update_container(cts[0])
    await list_cts(api)  # warm
    assert len(api._ct_summaries) == 6

    assert [c.id for c in await list_cts(api, id=cts[3].id[:6])] == [cts[3].id]
    assert [c.id for c in await list_cts(api, pod_sandbox_id=pods[4].id)] == [cts[4].id]
    running = await list_cts(api, state=pb.ContainerStateValue(state=RUNNING))
    assert [c.id for c in running] == [cts[0].id]
    front = await list_cts(api, label_selector={"tier": "front"})
    assert [c.id for c in front] == [cts[1].id, cts[3].id, cts[5].id]
    assert await list_cts(api, label_selector={"tier": "front", "n": "2"}) == []
    assert len(await list_cts(api)) == 6  # filtered calls did not drop entries for good


async def test_a_container_being_created_is_not_listed(api: Api) -> None:
    pods, _ = populate(api, 1)
    api.store.insert_container(ct_rec(9, pods[0].id, state="creating"))
    assert len(await list_cts(api)) == 1


async def test_editing_a_reply_does_not_reach_the_next(api: Api) -> None:
    _, cts = populate(api, 2)
    first = parsed(api.ListContainers(pb.ListContainersRequest(), None), LCR)
    first.containers[0].labels["tier"] = "changed"
    first.containers[0].state = EXITED
    first.containers[0].metadata.name = "changed"
    del first.containers[1]
    status = parsed(
        api.ContainerStatus(pb.ContainerStatusRequest(container_id=cts[0].id), None), CSR
    )
    status.status.mounts[0].host_path = "/changed"
    status.status.exit_code = 99

    again = await list_cts(api)
    assert len(again) == 2
    assert (again[0].labels["tier"], again[0].state) == ("back", CREATED)
    assert again[0].metadata.name == "c0"
    st = await ct_status(api, cts[0].id)
    assert (st.mounts[0].host_path, st.exit_code) == ("/h0", 0)


async def test_verbose_status_carries_info_and_the_next_plain_one_does_not(api: Api) -> None:
    _, cts = populate(api, 1)
    req = pb.ContainerStatusRequest(container_id=cts[0].id, verbose=True)
    verbose = api.ContainerStatus(req, None)
    assert '"sandboxID"' in verbose.info["info"]
    plain = parsed(
        api.ContainerStatus(pb.ContainerStatusRequest(container_id=cts[0].id), None), CSR
    )
    assert dict(plain.info) == {} and plain.status == verbose.status


async def test_status_calls_alone_do_not_pile_up_removed_records(api: Api) -> None:
    pods, _ = populate(api, 1)
    for i in range(300):  # create, poll, remove: never a ListContainers
        rec = ct_rec(100 + i, pods[0].id)
        api.store.insert_container(rec)
        await ct_status(api, rec.id)
        api.store.delete_container(rec.id)
    assert len(api._ct_statuses) <= 64


# ---- pods through the RPCs ------------------------------------------------------------


async def test_pod_state_and_ips_show_in_the_next_list_and_status(api: Api) -> None:
    pods, _ = populate(api, 3)
    req = pb.PodSandboxStatusRequest(pod_sandbox_id=pods[1].id)
    assert parsed(api.PodSandboxStatus(req, None), PSR).status.network.ip == "10.0.0.1"
    await list_pods(api)

    pods[1].state, pods[1].ips = "notready", []
    api.store.update_pod(pods[1])
    st = parsed(api.PodSandboxStatus(req, None), PSR).status
    assert (st.state, st.network.ip) == (pb.PodSandboxState.SANDBOX_NOTREADY, "")
    listed = await list_pods(api)
    assert [p.state for p in listed] == [0, 1, 0]  # READY=0, NOTREADY=1


async def test_a_removed_pod_disappears_and_leaves_no_entry(api: Api) -> None:
    pods, cts = populate(api, 3)
    for p in pods:
        api.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=p.id), None)
    await list_pods(api)
    api.store.delete_container(cts[0].id)  # as RemovePodSandbox does: its containers first
    api.store.delete_pod(pods[0].id)
    assert [p.id for p in await list_pods(api)] == [pods[1].id, pods[2].id]
    assert len(api._pod_summaries) == 2 and len(api._pod_statuses) == 2
    with pytest.raises(NotFound):
        api.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0].id), None)


async def test_pod_filters_apply_with_the_cache_warm(api: Api) -> None:
    pods, _ = populate(api, 5)
    pods[2].state = "notready"
    api.store.update_pod(pods[2])
    await list_pods(api)
    assert [p.id for p in await list_pods(api, id=pods[3].id[:6])] == [pods[3].id]
    notready = pb.PodSandboxStateValue(state=pb.PodSandboxState.SANDBOX_NOTREADY)
    assert [p.id for p in await list_pods(api, state=notready)] == [pods[2].id]
    web = await list_pods(api, label_selector={"app": "web"})
    assert [p.id for p in web] == [pods[1].id, pods[3].id]
    assert web[0].annotations["note"] == "pod 1"
    assert len(await list_pods(api)) == 5


# ---- whole list replies ----------------------------------------------------------------


async def test_an_unchanged_store_answers_a_repeated_list_with_the_same_reply(api: Api) -> None:
    _, cts = populate(api, 3)
    first = api.ListContainers(pb.ListContainersRequest(), None)
    assert api.ListContainers(pb.ListContainersRequest(), None) is first  # built once
    by_id = pb.ListContainersRequest(filter=pb.ContainerFilter(id=cts[0].id))
    assert len(parsed(api.ListContainers(by_id, None), LCR).containers) == 1  # own entry
    assert len(parsed(api.ListContainers(pb.ListContainersRequest(), None), LCR).containers) == 3
    pods_first = api.ListPodSandbox(pb.ListPodSandboxRequest(), None)
    assert api.ListPodSandbox(pb.ListPodSandboxRequest(), None) is pods_first


async def test_any_write_to_the_store_rebuilds_the_next_list(api: Api) -> None:
    _, cts = populate(api, 2)
    assert [c.state for c in await list_cts(api)] == [CREATED, CREATED]
    assert len(await list_pods(api)) == 2
    cts[0].state = "running"
    api.store.update_container(cts[0])  # a container write: both lists rebuild
    assert [c.state for c in await list_cts(api)] == [RUNNING, CREATED]
    api.store.insert_pod(pod_rec(7))
    assert len(await list_pods(api)) == 3
    api.store.delete_container(cts[1].id)
    assert [c.id for c in await list_cts(api)] == [cts[0].id]

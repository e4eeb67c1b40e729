"""CRI RuntimeService, container RPCs: proto in, service call, proto out."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from cri_api.v1 import api_pb2 as pb
from google.protobuf.json_format import ParseDict

from podling.api.pods import pod_status
from podling.api.reply_cache import ListCache, ReplyCache, field_number
from podling.services.container_create import spec_of
from podling.services.containers import ContainerService
from podling.services.events import CREATED, DELETED, STARTED, Event, EventBus
from podling.services.execsync import exec_sync
from podling.services.pods import PodService
from podling.services.stats import StatsCollector
from podling.services.validate import require
from podling.store.pods import CT_CREATED, CT_CREATING, CT_EXITED, CT_RUNNING, ContainerRecord

_STATES = {
    CT_CREATED: pb.ContainerState.CONTAINER_CREATED,
    CT_RUNNING: pb.ContainerState.CONTAINER_RUNNING,
    CT_EXITED: pb.ContainerState.CONTAINER_EXITED,
}
_EVENTS = {
    CREATED: pb.ContainerEventType.CONTAINER_CREATED_EVENT,
    STARTED: pb.ContainerEventType.CONTAINER_STARTED_EVENT,
    DELETED: pb.ContainerEventType.CONTAINER_DELETED_EVENT,
}


def ct_state(rec: ContainerRecord) -> pb.ContainerState.ValueType:
    return _STATES.get(rec.state, pb.ContainerState.CONTAINER_UNKNOWN)


# Every record field ct_status / ct_summary read: their reply caches' keys (the unit tests
# check that changing any other field leaves the reply as it was).
STATUS_FIELDS = (
    "id",
    "config",
    "state",
    "created_ns",
    "started_ns",
    "finished_ns",
    "exit_code",
    "image",
    "image_id",
    "reason",
    "message",
    "mounts",
    "log_path",
)
SUMMARY_FIELDS = ("id", "pod_id", "config", "image", "image_id", "state", "created_ns")


def ct_status(rec: ContainerRecord) -> pb.ContainerStatus:
    config = pb.ContainerConfig.FromString(rec.config)
    return pb.ContainerStatus(
        id=rec.id,
        metadata=config.metadata,
        state=ct_state(rec),
        created_at=rec.created_ns,
        started_at=rec.started_ns,
        finished_at=rec.finished_ns,
        exit_code=rec.exit_code,
        image=pb.ImageSpec(image=rec.image),
        image_ref=rec.image_id,
        image_id=rec.image_id,
        reason=rec.reason,
        message=rec.message,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        mounts=[ParseDict(m, pb.Mount()) for m in rec.mounts],
        log_path=rec.log_path,
    )


def ct_summary(rec: ContainerRecord) -> pb.Container:
    config = pb.ContainerConfig.FromString(rec.config)
    return pb.Container(
        id=rec.id,
        pod_sandbox_id=rec.pod_id,
        metadata=config.metadata,
        image=pb.ImageSpec(image=rec.image),
        image_ref=rec.image_id,
        image_id=rec.image_id,
        state=ct_state(rec),
        created_at=rec.created_ns,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
    )


def _matches(rec: ContainerRecord, flt: pb.ContainerFilter) -> bool:
    if flt.id and not rec.id.startswith(flt.id):
        return False
    if flt.pod_sandbox_id and not rec.pod_id.startswith(flt.pod_sandbox_id):
        return False
    if flt.HasField("state") and ct_state(rec) != flt.state.state:
        return False
    if not flt.label_selector:  # the usual case: no need to parse the config
        return True
    labels = pb.ContainerConfig.FromString(rec.config).labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


def _verbose(rec: ContainerRecord) -> str:
    info = {
        "pid": rec.pid,
        "sandboxID": rec.pod_id,
        "runtimeSpec": spec_of(rec),
        "snapshotKey": rec.snapshot,
        "bundle": rec.bundle,
    }
    return json.dumps(info)


class ContainersApi:
    _pods: PodService
    _containers: ContainerService
    _events: EventBus
    _stats: StatsCollector

    @functools.cached_property
    def _ct_statuses(self) -> ReplyCache[ContainerRecord]:
        number = field_number(pb.ContainerStatusResponse, "status")
        return ReplyCache(ct_status, STATUS_FIELDS, number, self._container_ids)

    @functools.cached_property
    def _ct_summaries(self) -> ReplyCache[ContainerRecord]:
        number = field_number(pb.ListContainersResponse, "containers")
        return ReplyCache(ct_summary, SUMMARY_FIELDS, number, self._container_ids)

    @functools.cached_property
    def _ct_lists(self) -> ListCache:
        return ListCache()

    def _container_ids(self) -> list[str]:
        return self._containers.store.ids_with_prefix("containers", "")

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Any
    ) -> pb.CreateContainerResponse:
        cid = await self._containers.create(request.pod_sandbox_id, request.config)
        return pb.CreateContainerResponse(container_id=cid)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Any
    ) -> pb.StartContainerResponse:
        await self._containers.start(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Any
    ) -> pb.StopContainerResponse:
        await self._containers.stop(require(request.container_id, "container_id"), request.timeout)
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Any
    ) -> pb.RemoveContainerResponse:
        await self._containers.remove(require(request.container_id, "container_id"))
        return pb.RemoveContainerResponse()

    def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Any
    ) -> pb.ContainerStatusResponse | bytes:
        rec = self._containers.get(request.container_id, shared=True)  # read, never changed
        wire = self._ct_statuses.field(rec)  # the reply itself, as the server sends it
        if not request.verbose:
            return wire
        resp = pb.ContainerStatusResponse.FromString(wire)  # a new message, shared with nothing
        resp.info["info"] = _verbose(rec)
        return resp

    def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> bytes:
        generation = self._containers.store.generation
        # a ListContainersResponse on the wire
        return self._ct_lists.answer(generation, request, self._list_containers)

    def _list_containers(self, request: pb.ListContainersRequest) -> bytes:
        every = self._containers.store.containers(shared=True)  # read only
        recs = [r for r in every if r.state != CT_CREATING]
        if request.HasField("filter"):
            recs = [r for r in recs if _matches(r, request.filter)]
        wire = b"".join([self._ct_summaries.field(r) for r in recs])
        live = {r.id for r in every}
        self._ct_summaries.retain(live)
        self._ct_statuses.retain(live)
        return wire

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Any
    ) -> pb.UpdateContainerResourcesResponse:
        await self._containers.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Any
    ) -> pb.ReopenContainerLogResponse:
        self._containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        res = await exec_sync(
            self._containers, request.container_id, list(request.cmd), request.timeout
        )
        return pb.ExecSyncResponse(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)

    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Any
    ) -> pb.ContainerStatsResponse:
        rec = self._containers.get(request.container_id)
        pod = self._pods.get(rec.pod_id)
        stats = await asyncio.to_thread(self._stats.container, rec, pod)
        return pb.ContainerStatsResponse(stats=stats)

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Any
    ) -> pb.ListContainerStatsResponse:
        f = request.filter
        flt = pb.ContainerFilter(
            id=f.id, pod_sandbox_id=f.pod_sandbox_id, label_selector=dict(f.label_selector)
        )
        pairs = []
        for rec in self._containers.store.containers():
            if rec.state not in (CT_RUNNING, CT_CREATED) or not _matches(rec, flt):
                continue
            pod = self._pods.find(rec.pod_id)
            if pod is not None:
                pairs.append((rec, pod))
        # cgroup files and disk usage are read in a worker thread: ~1 ms per container,
        # which on the event loop would hold up every other RPC (200 containers: 180 ms)
        stats = await asyncio.to_thread(lambda: [self._stats.container(r, p) for r, p in pairs])
        return pb.ListContainerStatsResponse(stats=stats)

    def _running(self, pod_id: str) -> list[ContainerRecord]:
        return [c for c in self._containers.store.containers(pod_id) if c.state == CT_RUNNING]

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Any
    ) -> pb.PodSandboxStatsResponse:
        pod = self._pods.get(request.pod_sandbox_id)
        running = self._running(pod.id)
        stats = await asyncio.to_thread(self._stats.pod, pod, running)
        return pb.PodSandboxStatsResponse(stats=stats)

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Any
    ) -> pb.ListPodSandboxStatsResponse:
        f = request.filter
        flt = pb.PodSandboxFilter(id=f.id, label_selector=dict(f.label_selector))
        pairs = [(pod, self._running(pod.id)) for pod in self._pods.list(flt)]
        stats = await asyncio.to_thread(lambda: [self._stats.pod(p, c) for p, c in pairs])
        return pb.ListPodSandboxStatsResponse(stats=stats)

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Any
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        async for event in self._events.subscribe():
            yield self._event_proto(event)

    def _event_proto(self, event: Event) -> pb.ContainerEventResponse:
        kind = _EVENTS.get(event.kind, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)
        resp = pb.ContainerEventResponse(
            container_id=event.container_id, container_event_type=kind, created_at=event.at_ns
        )
        pod = self._pods.find(event.pod_id)
        if pod is not None:
            resp.pod_sandbox_status.CopyFrom(pod_status(pod))
            resp.containers_statuses.extend(
                ct_status(c)
                for c in self._containers.store.containers(pod.id)
                if c.state != CT_CREATING
            )
        return resp

"""CRI RuntimeService, pod sandbox RPCs: proto in, service call, proto out."""

from __future__ import annotations

import functools
import json
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.api.reply_cache import ListCache, ReplyCache, field_number
from podling.services.pods import PodService
from podling.services.validate import require
from podling.store.pods import POD_READY, PodRecord

# Every record field pod_status / pod_summary read: their reply caches' keys (the unit
# tests check that changing any other field leaves the reply as it was).
STATUS_FIELDS = ("id", "config", "state", "created_ns", "ips", "runtime_handler")
SUMMARY_FIELDS = ("id", "config", "state", "created_ns", "runtime_handler")


def pod_state(rec: PodRecord) -> pb.PodSandboxState.ValueType:
    return (
        pb.PodSandboxState.SANDBOX_READY
        if rec.state == POD_READY
        else pb.PodSandboxState.SANDBOX_NOTREADY
    )


def pod_status(rec: PodRecord) -> pb.PodSandboxStatus:
    config = pb.PodSandboxConfig.FromString(rec.config)
    ips = list(rec.ips)
    return pb.PodSandboxStatus(
        id=rec.id,
        metadata=config.metadata,
        state=pod_state(rec),
        created_at=rec.created_ns,
        network=pb.PodSandboxNetworkStatus(
            ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]]
        ),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(options=config.linux.security_context.namespace_options)
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=rec.runtime_handler,
    )


def pod_verbose(rec: PodRecord) -> dict[str, str]:
    info = {
        "pid": rec.infra_pid,
        "infraContainerId": rec.infra_id,
        "namespaces": rec.namespaces,
        "cniResult": rec.cni_result,
        "cgroupParent": rec.cgroup_parent,
        "podDir": rec.pod_dir,
    }
    return {"info": json.dumps(info)}


def pod_summary(rec: PodRecord) -> pb.PodSandbox:
    config = pb.PodSandboxConfig.FromString(rec.config)
    return pb.PodSandbox(
        id=rec.id,
        metadata=config.metadata,
        state=pod_state(rec),
        created_at=rec.created_ns,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=rec.runtime_handler,
    )


class PodsApi:
    _pods: PodService

    @functools.cached_property
    def _pod_statuses(self) -> ReplyCache[PodRecord]:
        number = field_number(pb.PodSandboxStatusResponse, "status")
        return ReplyCache(pod_status, STATUS_FIELDS, number, self._pod_ids)

    @functools.cached_property
    def _pod_summaries(self) -> ReplyCache[PodRecord]:
        number = field_number(pb.ListPodSandboxResponse, "items")
        return ReplyCache(pod_summary, SUMMARY_FIELDS, number, self._pod_ids)

    @functools.cached_property
    def _pod_lists(self) -> ListCache:
        return ListCache()

    def _pod_ids(self) -> list[str]:
        return self._pods.store.ids_with_prefix("pods", "")

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Any
    ) -> pb.RunPodSandboxResponse:
        pod_id = await self._pods.run(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Any
    ) -> pb.StopPodSandboxResponse:
        await self._pods.stop(_id(request.pod_sandbox_id))
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Any
    ) -> pb.RemovePodSandboxResponse:
        await self._pods.remove(_id(request.pod_sandbox_id))
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Any
    ) -> pb.PodSandboxStatusResponse | bytes:
        rec = self._pods.get(request.pod_sandbox_id, shared=True)  # read, never changed
        wire = self._pod_statuses.field(rec)  # the reply itself, as the server sends it
        if not request.verbose:
            return wire
        resp = pb.PodSandboxStatusResponse.FromString(wire)  # a new message, shared with nothing
        resp.info.update(pod_verbose(rec))
        return resp

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Any) -> bytes:
        # a ListPodSandboxResponse on the wire
        return self._pod_lists.answer(self._pods.store.generation, request, self._list_pods)

    def _list_pods(self, request: pb.ListPodSandboxRequest) -> bytes:
        flt = request.filter if request.HasField("filter") else None
        pods = self._pods.list(flt)
        wire = b"".join([self._pod_summaries.field(p) for p in pods])
        if flt is None:  # every pod but those still being created: drop removed ones
            live = {p.id for p in pods}
            self._pod_summaries.retain(live)
            self._pod_statuses.retain(live)
        return wire


def _id(value: str) -> str:
    return require(value, "pod_sandbox_id")

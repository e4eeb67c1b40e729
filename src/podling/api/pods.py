"""CRI RuntimeService, pod sandbox RPCs: proto in, service call, proto out."""

from __future__ import annotations

import json
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.services.pods import PodService
from podling.services.validate import require
from podling.store.pods import POD_READY, PodRecord


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

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Any
    ) -> pb.PodSandboxStatusResponse:
        rec = self._pods.get(request.pod_sandbox_id)
        info = pod_verbose(rec) if request.verbose else {}
        return pb.PodSandboxStatusResponse(status=pod_status(rec), info=info)

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Any
    ) -> pb.ListPodSandboxResponse:
        flt = request.filter if request.HasField("filter") else None
        return pb.ListPodSandboxResponse(items=[pod_summary(p) for p in self._pods.list(flt)])


def _id(value: str) -> str:
    return require(value, "pod_sandbox_id")

"""CRI RuntimeService, streaming RPCs: Exec, Attach, PortForward.

None of them streams: each validates the request (the reference library's rules, plus
"the container must be running" / "the pod must be ready" as containerd checks), stores
it under a one-time token and answers the URL where the client opens the stream
(docs: streaming.md §1). The stream itself is served by streaming/server.py, which takes
its options from the stored request, never from the URL.
"""

from __future__ import annotations

from typing import Any, Protocol

from cri_api.v1 import api_pb2 as pb

from podling.errors import InvalidArgument
from podling.services.containers import ContainerService
from podling.services.pods import PodService
from podling.services.validate import command, require
from podling.streaming.backend import AttachParams, ExecParams, Kind, Params, PortForwardParams
from podling.streaming.runtime_backend import ready_pod, running_container


class StreamUrls(Protocol):
    """What the RPCs need of the streaming server: a URL for a stored request
    (ResourceExhausted when too many are outstanding)."""

    def url(self, kind: Kind, params: Params) -> str: ...


def check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        raise InvalidArgument(
            "tty and stderr cannot both be set: a terminal merges stderr into stdout"
        )
    if not (stdin or stdout or stderr):
        raise InvalidArgument(
            "one of stdin, stdout or stderr must be set: there is nothing to stream"
        )


class StreamsApi:
    _pods: PodService
    _containers: ContainerService
    _streaming: StreamUrls

    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        require(request.container_id, "container_id")
        check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        command(request.cmd, "cmd")
        rec = running_container(self._containers, request.container_id)
        params = ExecParams(
            container_id=rec.id,
            cmd=tuple(request.cmd),
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return pb.ExecResponse(url=self._streaming.url("exec", params))

    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        """A container created without stdin may still be attached with stdin: its input
        is dropped (as the reference runtimes do), the output still flows."""
        require(request.container_id, "container_id")
        check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        rec = running_container(self._containers, request.container_id)
        params = AttachParams(
            container_id=rec.id,
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return pb.AttachResponse(url=self._streaming.url("attach", params))

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Any
    ) -> pb.PortForwardResponse:
        require(request.pod_sandbox_id, "pod_sandbox_id")
        bad = [p for p in request.port if not 0 < p < 65536]
        if bad:
            raise InvalidArgument(f"ports {bad} are out of range (1-65535)")
        pod = ready_pod(self._pods, request.pod_sandbox_id)
        params = PortForwardParams(pod_sandbox_id=pod.id, ports=tuple(request.port))
        return pb.PortForwardResponse(url=self._streaming.url("portforward", params))

"""CRI RuntimeService: Version, Status, RuntimeConfig. Every other RPC answers
UNIMPLEMENTED with the RPC's name until the runtime service is built."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cri_api.v1 import api_pb2 as pb

import podling
from podling.api.containers import ContainersApi
from podling.api.metrics_api import MetricsApi
from podling.api.pods import PodsApi
from podling.api.streams import StreamsApi, StreamUrls
from podling.api.unimplemented import fill_unimplemented
from podling.config import Config
from podling.services.containers import ContainerService
from podling.services.events import EventBus
from podling.services.pods import PodService
from podling.services.stats import StatsCollector
from podling.services.status import network_condition, runtime_conditions

RUNTIME_NAME = "podling"
RUNTIME_API_VERSION = "v1"


class RuntimeServicer(
    PodsApi,
    ContainersApi,
    StreamsApi,
    MetricsApi,
):
    def __init__(
        self,
        cfg: Config,
        pods: PodService,
        containers: ContainerService,
        events: EventBus,
        stats: StatsCollector,
        streaming: StreamUrls,
    ) -> None:
        self._cfg = cfg
        self._pods = pods
        self._containers = containers
        self._events = events
        self._stats = stats
        self._streaming = streaming

    def set_config(self, cfg: Config) -> None:
        """The config Status(verbose) reports from now on (after a config reload)."""
        self._cfg = cfg

    def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=podling.__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        handlers = self._pods.deps.handlers
        conds = [*runtime_conditions(handlers), network_condition(self._pods.deps.cni)]
        status = pb.RuntimeStatus(
            conditions=[
                pb.RuntimeCondition(
                    type=c.type, status=c.status, reason=c.reason, message=c.message
                )
                for c in conds
            ]
        )
        info = {"config": json.dumps(dataclasses.asdict(self._cfg))} if request.verbose else {}
        return pb.StatusResponse(
            status=status,
            info=info,
            runtime_handlers=[
                pb.RuntimeHandler(
                    name=h.name,
                    features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=h.recursive_read_only_mounts,
                        user_namespaces=h.user_namespaces,
                    ),
                )
                for h in handlers.all()
            ],
            # spec_process implements both policies (Merge and Strict)
            features=pb.RuntimeFeatures(supplemental_groups_policy=True),
        )

    def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: Any
    ) -> pb.RuntimeConfigResponse:
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CgroupDriver.CGROUPFS)
        )


fill_unimplemented(RuntimeServicer, pb.DESCRIPTOR.services_by_name["RuntimeService"])

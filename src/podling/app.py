"""The composition root: Config → every component, built and wired in one place."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2_grpc as pb_grpc

from podling.api.admin import AdminServicer
from podling.api.images import ImageServicer
from podling.api.interceptors import LoggingErrorInterceptor
from podling.api.runtime import RuntimeServicer
from podling.config import Config
from podling.daemon_lock import DaemonLock
from podling.doctor import STARTUP_CHECKS, run_checks, system_host
from podling.errors import PodlingError, Unavailable
from podling.image.content import ContentStore
from podling.image.registry import HostConfig, RegistryClient
from podling.metrics import Metrics
from podling.metrics_http import MetricsServer
from podling.paths import Paths
from podling.runtimes.handlers import HandlerRegistry
from podling.runtimes.host import host_info
from podling.sandbox.cni import CniManager, DefaultNetwork
from podling.services.container_create import CreateDeps
from podling.services.containers import ContainerService
from podling.services.events import EventBus
from podling.services.exits import watch_exits
from podling.services.images import ImageService
from podling.services.importing import Importer
from podling.services.infra import InfraRunner
from podling.services.pod_run import PodRunDeps
from podling.services.pods import PodService
from podling.services.pull import Puller
from podling.services.records import ImageRecorder
from podling.services.recovery import recover
from podling.services.stats import StatsCollector
from podling.services.unpacking import LayerUnpacker
from podling.snapshots import create_snapshotter
from podling.snapshots.base import Snapshotter
from podling.store.metadata import MetadataStore, open_store
from podling.store.pods import PodStore
from podling.streaming.runtime_backend import RuntimeBackend
from podling.streaming.server import StreamingServer

log = logging.getLogger("podling")


def paths_of(cfg: Config) -> Paths:
    return Paths(root=Path(cfg.root), state=Path(cfg.state), socket=Path(cfg.socket))


@dataclass
class App:
    cfg: Config
    paths: Paths
    lock: DaemonLock
    store: MetadataStore
    registry: RegistryClient
    images: ImageService
    pods: PodService
    containers: ContainerService
    server: grpc.aio.Server
    streaming: StreamingServer
    metrics_server: MetricsServer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await asyncio.to_thread(_startup_checks, self.cfg)
        await self._start_metrics()  # first: a taken port fails the start before anything runs
        try:
            self.pods.deps.cni.ensure_config()
        except PodlingError as e:
            log.error("no usable CNI network: %s", e.message)  # Status says NetworkReady false
        await recover(self.pods, self.containers)
        await self.images.sweep()
        self._tasks.append(asyncio.create_task(watch_exits(self.containers), name="exits"))
        await self.streaming.start()  # before gRPC: Exec answers URLs with its real port
        await self.server.start()
        log.info("serving CRI v1", extra={"socket": str(self.paths.socket)})

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving; containers keep running (conmon holds them)."""
        await self.server.stop(grace)
        await self.streaming.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.images.puller.close()
        await self.registry.close()
        self.store.close()
        self.paths.socket.unlink(missing_ok=True)
        self.lock.release()

    async def _start_metrics(self) -> None:
        if self.metrics_server is None:
            return
        try:
            await self.metrics_server.start()
        except OSError as e:
            raise Unavailable(
                f"cannot serve metrics on {self.cfg.metrics.address}: {e}; "
                "free that port or change [metrics] address"
            ) from e


def _startup_checks(cfg: Config) -> None:
    """The cheap `podling doctor` checks, as warnings in the log (never fatal here)."""
    for f in run_checks(system_host(), cfg, only=STARTUP_CHECKS):
        if f.level != "ok":
            log.warning("doctor: %s: %s (fix: %s)", f.check, f.title, f.fix)


def build(cfg: Config) -> App:
    """Build every component. Takes the daemon lock first: nothing is touched before it."""
    paths = paths_of(cfg)
    paths.ensure()
    lock = DaemonLock(paths)
    lock.acquire()
    try:
        return _wire(cfg, paths, lock)
    except BaseException:
        lock.release()
        raise


def _images(
    cfg: Config, store: MetadataStore, snapshotter: Snapshotter, paths: Paths
) -> tuple[RegistryClient, ImageService]:
    content = ContentStore(paths.content)
    hosts = {
        host: HostConfig(tuple(r.mirrors), r.insecure, r.skip_upstream)
        for host, r in cfg.images.registries.items()
    }
    registry = RegistryClient(hosts, stall_timeout=cfg.images.pull_stall_timeout)
    unpacker = LayerUnpacker(snapshotter, cfg.images.max_layer_size)
    importer = Importer(unpacker, ImageRecorder(store), store.chain_in_use)
    puller = Puller(registry, content, importer, cfg.images.max_concurrent_downloads)
    return registry, ImageService(store, content, importer, puller, cfg.images.pinned)


def _runtime(
    cfg: Config, store: MetadataStore, snapshotter: Snapshotter, paths: Paths
) -> tuple[PodService, ContainerService, EventBus]:
    events = EventBus()
    pod_store = PodStore(store)
    handlers = HandlerRegistry(cfg, paths)
    conmon = handlers.lookup("").conmon  # the default handler's: exit files are conmon's
    containers = ContainerService(
        CreateDeps(paths, pod_store, store, snapshotter, conmon, events, host_info(), handlers)
    )
    cni = CniManager(
        Path(cfg.network.cni_conf_dir),
        [Path(d) for d in cfg.network.cni_bin_dirs],
        paths.cni_cache,
        paths.ipam,
        DefaultNetwork(bridge=cfg.network.default_bridge, subnet=cfg.network.default_subnet),
    )
    infra = InfraRunner(paths, handlers, cfg.runtime.infra_binary)
    pods = PodService(PodRunDeps(cfg, paths, pod_store, cni, infra, events, handlers), containers)
    return pods, containers, events


def _wire(cfg: Config, paths: Paths, lock: DaemonLock) -> App:
    store = open_store(paths.metadata_db)
    snapshotter = create_snapshotter(paths.snapshots, cfg.images.snapshotter)
    log.info("snapshotter ready", extra={"snapshotter": snapshotter.name})
    registry, images = _images(cfg, store, snapshotter, paths)
    pods, containers, events = _runtime(cfg, store, snapshotter, paths)
    containers.after_remove = images.sweep
    stats = StatsCollector(snapshotter, str(paths.snapshots))
    metrics = Metrics()
    metrics.watch_store(containers.store)
    images.puller.metrics = containers.metrics = metrics
    metrics_server = (
        MetricsServer(cfg.metrics.address, metrics.render) if cfg.metrics.address else None
    )
    server = grpc.aio.server(interceptors=[LoggingErrorInterceptor(metrics)])
    streaming = StreamingServer(
        RuntimeBackend(containers, pods),
        address=cfg.streaming.address,
        port=cfg.streaming.port,
        tls_cert=cfg.streaming.tls_cert,
        tls_key=cfg.streaming.tls_key,
        idle_timeout=cfg.streaming.idle_timeout,
    )
    runtime_api = RuntimeServicer(cfg, pods, containers, events, stats, streaming)
    pb_grpc.add_RuntimeServiceServicer_to_server(runtime_api, server)
    pb_grpc.add_ImageServiceServicer_to_server(ImageServicer(images, paths.snapshots), server)
    server.add_generic_rpc_handlers([AdminServicer(images).handler()])
    # grpc binds the socket here: make it 0660 from birth, so no other user can ever connect
    old = os.umask(0o117)
    try:
        server.add_insecure_port(f"unix://{paths.socket}")
    finally:
        os.umask(old)
    return App(
        cfg,
        paths,
        lock,
        store,
        registry,
        images,
        pods,
        containers,
        server,
        streaming,
        metrics_server,
    )

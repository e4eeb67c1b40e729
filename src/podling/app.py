"""The composition root: Config → every component, built and wired in one place."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling import log as log_mod
from podling import reload as reload_mod
from podling.api.admin import AdminServicer
from podling.api.images import ImageServicer
from podling.api.runtime import RuntimeServicer
from podling.config import Config
from podling.daemon_lock import DaemonLock
from podling.doctor import STARTUP_CHECKS, run_checks, system_host
from podling.errors import ConfigError, PodlingError, Unavailable
from podling.image.content import ContentStore
from podling.image.registry import HostConfig, RegistryClient
from podling.image.registry_endpoints import normalize_hosts
from podling.metrics import Metrics
from podling.metrics_http import MetricsServer
from podling.oslib.memory import trim_heap
from podling.paths import Paths
from podling.rpc.server import Server, service_methods
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
    server: Server
    streaming: StreamingServer
    metrics_server: MetricsServer | None = None
    runtime_api: RuntimeServicer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        await asyncio.to_thread(_startup_checks, self.cfg)
        await self._start_metrics()  # first: a taken port fails the start before anything runs
        try:
            self.pods.deps.cni.ensure_config()
        except PodlingError as e:
            log.error("no usable CNI network: %s", e.message)  # Status says NetworkReady false
        try:
            await self.pods.deps.cni.start()
        except PodlingError as e:  # pods already running keep the rules they had
            log.error("masquerading of the default network: %s", e.message)
        await recover(self.pods, self.containers)
        await self.images.sweep()
        self._tasks.append(asyncio.create_task(watch_exits(self.containers), name="exits"))
        await self.streaming.start()  # before gRPC: Exec answers URLs with its real port
        await self.server.start()
        await asyncio.to_thread(trim_heap)  # what start-up (imports, recovery) freed
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

    async def reload(self, load: Callable[[], Config]) -> reload_mod.ReloadPlan | None:
        """Re-read the config with `load` and apply what can change live (see reload.py);
        every other changed key is named in a warning. A config that does not load or
        validate is logged as an error and changes nothing. Reloads run one at a time;
        RPCs in flight are not waited for and keep the settings they started with."""
        async with self._reloading:
            try:
                new = await asyncio.to_thread(load)
                plan = reload_mod.plan(self.cfg, new, self._handlers_in_use())
                hosts, handlers = await asyncio.to_thread(self._prepare, plan.effective)
            except (ConfigError, PodlingError, OSError) as e:
                msg = e.message if isinstance(e, PodlingError) else str(e)
                log.error("config reload failed: %s; the previous config stays in effect", msg)
                return None
            self._commit(plan, hosts, handlers)
            return plan

    def _handlers_in_use(self) -> set[str]:
        store = self.containers.store
        names = {p.runtime_handler for p in store.pods()}
        return names | {c.runtime_handler for c in store.containers()}

    def _prepare(self, cfg: Config) -> tuple[dict[str, HostConfig], HandlerRegistry]:
        """Everything of a reload that can fail, built before anything is changed."""
        hosts = registry_hosts(cfg)
        normalize_hosts(hosts)  # ConfigError for a mirror that is no URL
        return hosts, HandlerRegistry(cfg, self.paths)

    def _commit(
        self, plan: reload_mod.ReloadPlan, hosts: dict[str, HostConfig], handlers: HandlerRegistry
    ) -> None:
        """Apply a prepared reload; nothing here can fail half-way."""
        eff = plan.effective
        if plan.changed("log"):
            log_mod.setup(eff.log.level, eff.log.format)
        self.registry.set_hosts(hosts)
        self.images.puller.set_max_downloads(eff.images.max_concurrent_downloads)
        self.pods.deps.handlers.adopt(handlers)
        self.cfg = eff
        if self.runtime_api is not None:
            self.runtime_api.set_config(eff)
        _log_plan(plan, handlers)

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


def _log_plan(plan: reload_mod.ReloadPlan, handlers: HandlerRegistry) -> None:
    for key in plan.restart:
        log.warning("config key %s changed; restart podlingd to apply", key)
    for name in plan.kept_handlers:
        log.warning(
            "runtime handler %s is still used by pods or containers: it keeps its old "
            "definition (its removal or new root waits); reload again once they are removed",
            name,
        )
    if plan.effective.default_runtime not in handlers.names():
        log.warning(
            "default_runtime %r is not a configured handler: pods that name no handler "
            "cannot run; configured: %s",
            plan.effective.default_runtime,
            ", ".join(handlers.names()),
        )
    log.info(
        "config reloaded",
        extra={"applied": ",".join(plan.applied) or "-", "restart": ",".join(plan.restart) or "-"},
    )


def registry_hosts(cfg: Config) -> dict[str, HostConfig]:
    """[images.registries.*] as the registry client's per-host settings."""
    return {
        host: HostConfig(tuple(r.mirrors), r.insecure, r.skip_upstream)
        for host, r in cfg.images.registries.items()
    }


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
    registry = RegistryClient(registry_hosts(cfg), stall_timeout=cfg.images.pull_stall_timeout)
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
    host = host_info(Path(cfg.runtime.seccomp_profile_root))
    containers = ContainerService(
        CreateDeps(paths, pod_store, store, snapshotter, conmon, events, host, handlers)
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
    streaming = StreamingServer(
        RuntimeBackend(containers, pods),
        address=cfg.streaming.address,
        port=cfg.streaming.port,
        tls_cert=cfg.streaming.tls_cert,
        tls_key=cfg.streaming.tls_key,
        idle_timeout=cfg.streaming.idle_timeout,
    )
    runtime_api = RuntimeServicer(cfg, pods, containers, events, stats, streaming)
    services = pb.DESCRIPTOR.services_by_name
    server = Server(
        service_methods(runtime_api, services["RuntimeService"])
        | service_methods(ImageServicer(images, paths.snapshots), services["ImageService"])
        | AdminServicer(images).methods(),
        metrics,
    )
    gid = socket_gid(cfg.socket_group) if cfg.socket_group else None  # before binding
    server.bind(paths.socket, 0o660)  # 0660 from birth: no other user can ever connect
    if gid is not None:
        os.chown(paths.socket, -1, gid)
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
        runtime_api,
    )


def socket_gid(group: str) -> int:
    """The gid of `socket_group` (a name or a number); ConfigError for an unknown name."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"socket_group {group!r}: no such group on this node; create it or name another"
        ) from None

"""The composition root: Config → every component, built and wired in one place."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2_grpc as pb_grpc

from podling.api.admin import AdminServicer
from podling.api.images import ImageServicer
from podling.api.interceptors import LoggingErrorInterceptor
from podling.api.runtime import RuntimeServicer
from podling.config import Config
from podling.daemon_lock import DaemonLock
from podling.image.content import ContentStore
from podling.image.registry import HostConfig, RegistryClient
from podling.paths import Paths
from podling.services.images import ImageService
from podling.services.importing import Importer
from podling.services.pull import Puller
from podling.services.records import ImageRecorder
from podling.services.unpacking import LayerUnpacker
from podling.snapshots import create_snapshotter
from podling.store.metadata import MetadataStore, open_store

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
    server: grpc.aio.Server

    async def start(self) -> None:
        await self.server.start()
        log.info("serving CRI v1", extra={"socket": str(self.paths.socket)})

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
        await self.images.puller.close()
        await self.registry.close()
        self.store.close()
        self.paths.socket.unlink(missing_ok=True)
        self.lock.release()


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


def _wire(cfg: Config, paths: Paths, lock: DaemonLock) -> App:
    store = open_store(paths.metadata_db)
    content = ContentStore(paths.content)
    snapshotter = create_snapshotter(paths.snapshots, cfg.images.snapshotter)
    log.info("snapshotter ready", extra={"snapshotter": snapshotter.name})
    hosts = {
        host: HostConfig(tuple(r.mirrors), r.insecure, r.skip_upstream)
        for host, r in cfg.images.registries.items()
    }
    registry = RegistryClient(hosts, stall_timeout=cfg.images.pull_stall_timeout)
    unpacker = LayerUnpacker(snapshotter, cfg.images.max_layer_size)
    importer = Importer(unpacker, ImageRecorder(store), store.chain_in_use)
    puller = Puller(registry, content, importer, cfg.images.max_concurrent_downloads)
    images = ImageService(store, content, importer, puller, cfg.images.pinned)
    server = grpc.aio.server(interceptors=[LoggingErrorInterceptor()])
    pb_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(cfg), server)
    pb_grpc.add_ImageServiceServicer_to_server(ImageServicer(images, paths.snapshots), server)
    server.add_generic_rpc_handlers([AdminServicer(images).handler()])
    # grpc binds the socket here: make it 0660 from birth, so no other user can ever connect
    old = os.umask(0o117)
    try:
        server.add_insecure_port(f"unix://{paths.socket}")
    finally:
        os.umask(old)
    return App(cfg, paths, lock, store, registry, images, server)

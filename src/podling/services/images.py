"""The image service: what each ImageService RPC (and `podling load`) does.

Image identity follows the kubelet: the id is the config digest; one image carries every
repo tag and repo digest it was pulled or loaded under. Removal takes every name of the
image at once (the kubelet removes by id and expects the image gone), then collects the
snapshots and blobs nothing else uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling import crashpoints
from podling.errors import InvalidArgument, NotFound, PodlingError
from podling.image.archive import ArchiveImage, import_archive
from podling.image.content import ContentStore
from podling.image.manifest import parse_config
from podling.image.reference import parse_reference
from podling.image.registry import Credentials
from podling.oslib.memory import trim_heap
from podling.services.importing import Importer
from podling.services.pull import Puller
from podling.services.records import find_image
from podling.snapshots.base import Snapshotter
from podling.store.metadata import ImageRecord, MetadataStore

log = logging.getLogger(__name__)
# a partial download untouched this long belongs to a pull nobody retried
INGEST_MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass(frozen=True)
class ImageUser:
    uid: int | None
    username: str


def image_user(config: dict[str, Any]) -> ImageUser:
    """The image's configured user: a numeric uid, or a username (group part dropped)."""
    user = str((config.get("config") or {}).get("User") or "")
    name = user.split(":", 1)[0]
    if name.isdigit():
        return ImageUser(int(name), "")
    return ImageUser(None, name)


class ImageService:
    def __init__(
        self,
        store: MetadataStore,
        content: ContentStore,
        importer: Importer,
        puller: Puller,
        pinned: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._content = content
        self._importer = importer
        self._unpacker = importer.unpacker
        self.puller = puller
        self._gc_lock = asyncio.Lock()
        self._pinned = {_normalised(p) for p in pinned}

    def is_pinned(self, rec: ImageRecord) -> bool:
        """Pinned by its record or by one of its names being in the configured list."""
        return rec.pinned or any(name in self._pinned for name, _ in rec.names)

    async def pull(self, image: str, creds: Credentials | None) -> str:
        if not image:
            raise InvalidArgument("image must not be empty: give a reference like busybox:1.36")
        return await self.puller.pull(image, creds)

    def status(self, image: str) -> ImageRecord | None:
        return find_image(self._store, image)

    def list_images(self, image_filter: str = "") -> list[ImageRecord]:
        if image_filter:
            rec = find_image(self._store, image_filter)
            return [] if rec is None else [rec]
        recs = (self._store.get_image(i) for i in self._store.image_ids())
        return [r for r in recs if r is not None]

    async def remove(self, image: str) -> None:
        """Remove the image with all its names; an unknown image is not an error (CRI:
        "This call is idempotent, and must not return an error if the image has already
        been removed")."""
        rec = find_image(self._store, image)
        if rec is None:
            return
        self._store.delete_image(rec.id)
        crashpoints.reach("RemoveImage/record deleted")
        await self._collect(rec)
        crashpoints.reach("RemoveImage/collected")

    async def _collect(self, rec: ImageRecord) -> None:
        async with self._gc_lock:
            await self._unpacker.collect(rec.chain_ids, self._store.chain_in_use)
            blobs = [rec.manifest_digest, rec.id]
            blobs += [d for d in self._blob_digests(rec) if d not in blobs]
            for digest in blobs:
                if not self._store.blob_in_use(digest):
                    self._content.delete(digest)

    async def sweep(self) -> None:
        """Remove image-layer snapshots no image uses any more, and partial downloads
        untouched for INGEST_MAX_AGE. RemoveImage skips a chain
        that a container's layer (or an image volume) still builds on; once that goes, the
        chain would stay forever without this sweep (run after container removal and at
        start)."""
        async with self._gc_lock:
            snapshotter = self._unpacker.snapshotter
            known: list[str] = snapshotter.keys()
            orphans = [
                k for k in known if k.startswith("sha256:") and not self._store.chain_in_use(k)
            ]
            # children before parents: a chain with a child cannot go first
            orphans.sort(key=lambda k: -len(_ancestry(snapshotter, k)))
            if orphans:
                await self._unpacker.collect(orphans[::-1], self._store.chain_in_use)
            pruned = await asyncio.to_thread(
                self._content.prune_ingests, INGEST_MAX_AGE, time.time()
            )
            if pruned:
                log.info("removed %d abandoned partial downloads", len(pruned))

    def _blob_digests(self, rec: ImageRecord) -> list[str]:
        try:
            man = json.loads(self._content.read_bytes(rec.manifest_digest))
            return [str(layer["digest"]) for layer in man.get("layers", [])]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    async def load(self, path: Path) -> list[tuple[str, list[str]]]:
        """Import an OCI layout or docker-save archive; returns (image id, names) each."""
        if not path.is_absolute():
            raise InvalidArgument(f"archive path must be absolute, got {str(path)!r}")
        if not path.exists():
            raise NotFound(f"{path}: no such file or directory")
        images = await asyncio.to_thread(import_archive, path, self._content)
        out: list[tuple[str, list[str]]] = []
        try:
            for img in images:
                out.append(await self._record_archive_image(img))
        finally:
            await asyncio.to_thread(trim_heap)  # an import streams as much as a pull
        return out

    async def _record_archive_image(self, img: ArchiveImage) -> tuple[str, list[str]]:
        man = img.manifest
        config_bytes = self._content.read_bytes(man.config.digest)

        async def blob(i: int) -> Path:
            return self._content.path(man.layers[i].digest)

        image_id = await self._importer.import_image(
            manifest_digest=img.manifest_digest,
            manifest=man,
            config=parse_config(config_bytes),
            config_bytes=config_bytes,
            names=archive_names(img.names, img.manifest_digest),
            blob=blob,
        )
        return image_id, list(img.names)

    async def fs_usage(self, snapshots_dir: Path) -> tuple[FsUsage, FsUsage]:
        """(image filesystem, container filesystem) usage, measured off the event loop."""
        now = time.time_ns()
        content_b, content_i = await asyncio.to_thread(self._content.usage)
        layers, writable = await asyncio.to_thread(self._snapshot_usage)
        image_fs = FsUsage(
            str(snapshots_dir.parent), content_b + layers[0], content_i + layers[1], now
        )
        container_fs = FsUsage(str(snapshots_dir), writable[0], writable[1], now)
        return image_fs, container_fs

    def _snapshot_usage(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((bytes, inodes) of image layers, (bytes, inodes) of containers' writable
        layers): committed chains are named by digest, containers' layers `ct-<id>`."""
        snapshotter = self._unpacker.snapshotter
        layers, writable = [0, 0], [0, 0]
        known: list[str] = snapshotter.keys()
        for key in known:
            if not key.startswith(("sha256:", "ct-")):
                continue  # extractions in progress and image-volume views
            try:
                used, inodes = snapshotter.usage(key)
            except PodlingError:
                continue  # removed meanwhile
            total = layers if key.startswith("sha256:") else writable
            total[0] += used
            total[1] += inodes
        return (layers[0], layers[1]), (writable[0], writable[1])


def archive_names(names: Sequence[str], manifest_digest: str) -> list[tuple[str, str]]:
    """The names a loaded image is recorded under: each tag, plus `repo@manifest digest`
    for each repository (as for a pull, so the kubelet sees a repo digest)."""
    out: set[tuple[str, str]] = set()
    for text in names:
        ref = parse_reference(text)
        if ref.repo_tag and not ref.digest:
            out.add((ref.repo_tag, "tag"))
        out.add((f"{ref.name}@{ref.digest or manifest_digest}", "digest"))
    return sorted(out)


def _normalised(text: str) -> str:
    ref = parse_reference(text)
    return str(ref.repo_digest if ref.digest else ref.repo_tag)


def _ancestry(snapshotter: Snapshotter, key: str) -> list[str]:
    chain = [key]
    while (parent := snapshotter.parent(chain[-1])) is not None:
        chain.append(parent)
    return chain

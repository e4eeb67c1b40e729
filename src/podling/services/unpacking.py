"""Turn an image's layer blobs into committed snapshots, one per chain id.

Chain ids come from the OCI image spec: ChainID(L0) = DiffID(L0) and
ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)). A committed snapshot
named by a chain id holds exactly the filesystem those layers make, so images that
share a base share its snapshots, and a layer is never unpacked twice.

Each extraction goes into a fresh active snapshot, is checked against the diff id the
image config promises, and only then is committed under the chain id; any failure
removes the active snapshot, so no partial layer is ever visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from podling import crashpoints
from podling.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from podling.image.manifest import Descriptor
from podling.image.unpack import apply_layer, open_layer
from podling.keyedlock import KeyedLocks
from podling.snapshots.base import Snapshotter

EXTRACT_PREFIX = "extract-"  # the active snapshot a layer is extracted into


def drop_unfinished_extractions(snapshotter: Snapshotter) -> None:
    """Remove the extractions a crash interrupted. Only at start: before any pull runs."""
    for key in snapshotter.keys():  # noqa: SIM118 - a Snapshotter, not a dict
        if key.startswith(EXTRACT_PREFIX):
            snapshotter.remove(key)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def diff_ids_of(config: dict[str, object], layer_count: int) -> list[str]:
    """The config's diff ids; InvalidArgument unless there is one per manifest layer."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise InvalidArgument("image config has no rootfs.diff_ids list")
    if len(ids) != layer_count:
        raise InvalidArgument(
            f"image config lists {len(ids)} diff ids but the manifest has {layer_count} layers"
        )
    return list(ids)


class LayerUnpacker:
    """Extracts layers into the snapshotter, one extraction per chain id at a time.

    `active` counts chain ids that an import in progress relies on, so garbage
    collection (which takes the same per-chain lock) never removes them under it.
    """

    def __init__(self, snapshotter: Snapshotter, max_layer_size: int) -> None:
        self.snapshotter = snapshotter
        self.max_layer_size = max_layer_size
        self.chain_locks: KeyedLocks[str] = KeyedLocks()
        self.active: Counter[str] = Counter()

    def missing(self, chains: Sequence[str]) -> list[int]:
        """Indexes of the layers whose snapshot does not exist yet (their blobs are needed)."""
        return [i for i, c in enumerate(chains) if not self.snapshotter.exists(c)]

    async def unpack(
        self,
        layers: Sequence[Descriptor],
        diff_ids: Sequence[str],
        blob: Callable[[int], Awaitable[Path]],
    ) -> list[str]:
        """Make sure every chain snapshot exists; `blob(i)` yields layer i's verified blob.

        The caller must hold `hold(chains)` for the returned chain ids until its image is
        recorded.
        """
        chains = chain_ids(diff_ids)
        parent: str | None = None
        for i, chain in enumerate(chains):
            async with self.chain_locks.hold(chain):
                if not self.snapshotter.exists(chain):
                    path = await blob(i)
                    await asyncio.to_thread(
                        self._extract, layers[i], path, chain, parent, diff_ids[i]
                    )
            parent = chain
        return chains

    def _extract(
        self, layer: Descriptor, blob: Path, chain: str, parent: str | None, diff_id: str
    ) -> None:
        key = f"{EXTRACT_PREFIX}{uuid.uuid4().hex}"
        dest = self.snapshotter.prepare(key, parent)
        try:
            with open_layer(blob, layer.media_type) as stream:
                result = apply_layer(
                    stream,
                    dest,
                    whiteouts=self.snapshotter.whiteouts,
                    max_bytes=self.max_layer_size,
                    lowers=self.snapshotter.lower_dirs(key),
                )
            if result.diff_id != diff_id:
                raise DataLoss(
                    f"layer {layer.digest} unpacks to {result.diff_id}, but the image config "
                    f"says {diff_id}"
                )
            crashpoints.reach("ImportImage/layer extracted")
            self._commit(chain, key)
            crashpoints.reach("ImportImage/layer committed")
        except BaseException:
            self.snapshotter.remove(key)
            raise

    def _commit(self, chain: str, key: str) -> None:
        """Commit `key` as `chain`. A pull cancelled mid-extraction releases the chain lock
        while its thread still runs, so another extraction of the same layer may have
        committed first: the chain id names the content, so that one is as good as ours."""
        try:
            self.snapshotter.commit(chain, key)
        except AlreadyExists:
            if not self.snapshotter.exists(chain):
                raise
            self.snapshotter.remove(key)

    @asynccontextmanager
    async def hold(self, chains: Sequence[str]) -> AsyncIterator[None]:
        """Protect `chains` from garbage collection while an import records its image."""
        self.active.update(chains)
        try:
            yield
        finally:
            self.active.subtract(chains)
            self.active += Counter()  # drop zero counts

    async def collect(self, chains: Sequence[str], in_use: Callable[[str], bool]) -> None:
        """Remove the snapshots of `chains` (top first) that nothing uses any more."""
        for chain in reversed(chains):
            async with self.chain_locks.hold(chain):
                if self.active[chain] or in_use(chain) or not self.snapshotter.exists(chain):
                    continue
                await asyncio.to_thread(self._remove_quietly, chain)

    def _remove_quietly(self, chain: str) -> None:
        # Another image's chain may still build on it, or it is gone already: keep going.
        with contextlib.suppress(FailedPrecondition, NotFound):
            self.snapshotter.remove(chain)

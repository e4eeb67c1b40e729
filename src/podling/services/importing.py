"""The last step every image takes, pulled or loaded: unpack its layers, then record it.

The chains stay protected from garbage collection from before the first layer is
unpacked until the record is written, so a concurrent RemoveImage of another image that
shares layers can never take a snapshot this image is about to rely on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from podling import crashpoints
from podling.image.manifest import Manifest
from podling.services.records import ImageRecorder
from podling.services.unpacking import LayerUnpacker, chain_ids, diff_ids_of

BlobFn = Callable[[int], Awaitable[Path]]


class Importer:
    def __init__(
        self,
        unpacker: LayerUnpacker,
        recorder: ImageRecorder,
        chain_in_use: Callable[[str], bool],
    ) -> None:
        self.unpacker = unpacker
        self._recorder = recorder
        self._chain_in_use = chain_in_use

    async def import_image(
        self,
        *,
        manifest_digest: str,
        manifest: Manifest,
        config: dict[str, object],
        config_bytes: bytes,
        names: Sequence[tuple[str, str]],
        blob: BlobFn,
        extra_blobs: Sequence[str] = (),
    ) -> str:
        """Unpack every missing layer (`blob(i)` gives layer i's verified blob) and record
        the image under `names`; returns the image id.

        On failure the snapshots this import made that no image uses are removed again
        (the verified blobs stay, so a retry does not download them twice)."""
        diff_ids = diff_ids_of(config, len(manifest.layers))
        chains = chain_ids(diff_ids)
        try:
            return await self._unpack_and_record(
                manifest_digest, manifest, config_bytes, names, blob, extra_blobs, diff_ids, chains
            )
        except BaseException:
            await asyncio.shield(self.unpacker.collect(chains, self._chain_in_use))
            raise

    async def _unpack_and_record(
        self,
        manifest_digest: str,
        manifest: Manifest,
        config_bytes: bytes,
        names: Sequence[tuple[str, str]],
        blob: BlobFn,
        extra_blobs: Sequence[str],
        diff_ids: list[str],
        chains: list[str],
    ) -> str:
        async with self.unpacker.hold(chains):
            await self.unpacker.unpack(manifest.layers, diff_ids, blob)
            crashpoints.reach("ImportImage/record the image/before")
            image_id = self._recorder.record(
                manifest_digest=manifest_digest,
                manifest=manifest,
                config_bytes=config_bytes,
                chains=chains,
                names=names,
                extra_blobs=extra_blobs,
            )
            crashpoints.reach("ImportImage/record the image/after")
            return image_id

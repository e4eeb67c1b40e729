"""The last step every image takes, pulled or loaded: unpack its layers, then record it.

The chains stay protected from garbage collection from before the first layer is
unpacked until the record is written, so a concurrent RemoveImage of another image that
shares layers can never take a snapshot this image is about to rely on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from podling.image.manifest import Manifest
from podling.services.records import ImageRecorder
from podling.services.unpacking import LayerUnpacker, chain_ids, diff_ids_of

BlobFn = Callable[[int], Awaitable[Path]]


class Importer:
    def __init__(self, unpacker: LayerUnpacker, recorder: ImageRecorder) -> None:
        self.unpacker = unpacker
        self._recorder = recorder

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
        the image under `names`; returns the image id."""
        diff_ids = diff_ids_of(config, len(manifest.layers))
        chains = chain_ids(diff_ids)
        async with self.unpacker.hold(chains):
            await self.unpacker.unpack(manifest.layers, diff_ids, blob)
            return self._recorder.record(
                manifest_digest=manifest_digest,
                manifest=manifest,
                config_bytes=config_bytes,
                chains=chains,
                names=names,
                extra_blobs=extra_blobs,
            )

"""Recording images in the metadata store, and finding them again by id, prefix or name."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from podling.errors import InvalidArgument
from podling.image.manifest import Manifest
from podling.image.reference import is_image_id, parse_reference
from podling.store.metadata import ImageRecord, MetadataStore


class ImageRecorder:
    """Writes image records; the image id is the config digest (as the kubelet expects)."""

    def __init__(self, store: MetadataStore, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._store = store
        self._clock_ns = clock_ns

    def record(
        self,
        *,
        manifest_digest: str,
        manifest: Manifest,
        config_bytes: bytes,
        chains: Sequence[str],
        names: Sequence[tuple[str, str]],
        extra_blobs: Sequence[str] = (),
    ) -> str:
        image_id = manifest.config.digest
        size = manifest.config.size + sum(layer.size for layer in manifest.layers)
        rec = ImageRecord(
            id=image_id,
            manifest_digest=manifest_digest,
            config=config_bytes,
            size=size,
            pinned=False,
            created_ns=self._clock_ns(),
            names=tuple(sorted(set(names))),
            chain_ids=tuple(chains),
        )
        blobs = [manifest_digest, manifest.config.digest, *(d.digest for d in manifest.layers)]
        self._store.put_image(rec, [*blobs, *extra_blobs])
        return image_id


def find_image(store: MetadataStore, text: str) -> ImageRecord | None:
    """The image `text` names: an id (full, `sha256:`-less, or a unique prefix of at least
    12 hex digits), a tag or a digest reference (normalised). None if there is none."""
    if not text:
        raise InvalidArgument("image must not be empty: give an image id, name:tag or name@digest")
    image_id = _by_id(store, text)
    if image_id is None and is_image_id(text):
        return None  # a full id that is not here: nothing to look up by name
    if image_id is None:
        ref = parse_reference(text)
        image_id = store.image_by_name(ref.repo_digest or ref.repo_tag or ref.name)
        if image_id is None and ref.digest and ref.tag:
            # name:tag@digest: the digest decides, as containerd does
            image_id = store.image_by_name(f"{ref.name}@{ref.digest}")
    return None if image_id is None else store.get_image(image_id)


def _by_id(store: MetadataStore, text: str) -> str | None:
    if is_image_id(text):
        full = text if text.startswith("sha256:") else "sha256:" + text
        return full if store.get_image(full) is not None else None
    hex_part = text.removeprefix("sha256:")
    if 12 <= len(hex_part) < 64 and all(c in "0123456789abcdef" for c in hex_part):
        found = store.images_by_id_prefix("sha256:" + hex_part)
        if len(found) == 1:
            return found[0]
    return None

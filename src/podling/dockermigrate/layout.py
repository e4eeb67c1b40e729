"""Write Docker images (read by dataroot) as one OCI image layout, verifying every layer.

Contract: `write_layout(images, dest)` fills the empty directory `dest` with an OCI image
layout (oci-layout, index.json, blobs/sha256/...) holding every image it could verify, and
returns one `Outcome` per input image. Each layer is rebuilt byte for byte from its
tar-split metadata and diff dir and kept only if its sha256 equals the recorded diff id;
layers are stored uncompressed, so a layer's blob digest *is* its diff id. An image with a
`problem`, or with a layer that fails verification, is left out of index.json and its
outcome says why (naming the layer, and the damaged file when the CRC-64 finds it). The
config blob is Docker's config byte for byte, so the image id stays the same. index.json
has one entry per name, annotated `io.containerd.image.name`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.dockermigrate.dataroot import DockerImage, DockerLayer
from podling.dockermigrate.tarsplit import assemble, find_damaged, read_entries
from podling.errors import DataLoss, PodlingError
from podling.image import manifest as mf
from podling.image.archive import IMAGE_NAME_ANNOTATION
from podling.image.content import digest_hex, sha256_digest

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Outcome:
    """What happened to one image: `error` is None if it is in the layout."""

    image: DockerImage
    error: str | None = None


def write_layout(images: list[DockerImage], dest: Path) -> list[Outcome]:
    """Write the verifiable images into the layout at `dest`; see the module doc."""
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    sizes: dict[str, int] = {}  # diff id → size of the verified blob, shared between images
    outcomes: list[Outcome] = []
    entries: list[dict[str, Any]] = []
    for image in images:
        if image.problem is not None:
            outcomes.append(Outcome(image, image.problem))
            continue
        try:
            entries.extend(_write_image(image, dest, sizes))
            outcomes.append(Outcome(image))
        except PodlingError as e:
            outcomes.append(Outcome(image, e.message))
    index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": entries}
    (dest / "index.json").write_text(json.dumps(index, indent=2))
    return outcomes


def _write_image(image: DockerImage, dest: Path, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Blobs and manifest of one image; the index entries naming it."""
    layers = []
    for layer in image.layers:
        if layer.diff_id not in sizes:
            sizes[layer.diff_id] = write_layer(layer, dest)
        layers.append(_desc(OCI_LAYER, layer.diff_id, sizes[layer.diff_id]))
    _put(dest, image.config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": _desc(mf.OCI_CONFIG, image.id, len(image.config)),
        "layers": layers,
    }
    data = json.dumps(manifest, indent=2).encode()
    entry = _desc(mf.OCI_MANIFEST, _put(dest, data), len(data))
    return [{**entry, "annotations": {IMAGE_NAME_ANNOTATION: name}} for name in image.names]


def _desc(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _put(dest: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    (dest / "blobs" / "sha256" / digest_hex(digest)).write_bytes(data)
    return digest


def write_layer(layer: DockerLayer, dest: Path) -> int:
    """Rebuild `layer` into dest's blobs; its size. DataLoss (naming the layer) on mismatch."""
    blobs = dest / "blobs" / "sha256"
    tmp = blobs / f"partial-{digest_hex(layer.diff_id)}"
    try:
        with tmp.open("wb") as out:
            actual = assemble(read_entries(layer.tar_split), layer.diff_dir, out)
    except DataLoss as e:
        tmp.unlink(missing_ok=True)
        raise DataLoss(f"layer {layer.diff_id}: {e.message}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if actual != layer.diff_id:
        tmp.unlink()
        raise DataLoss(_mismatch(layer, actual))
    size = tmp.stat().st_size
    os.replace(tmp, blobs / digest_hex(layer.diff_id))
    return size


def _mismatch(layer: DockerLayer, actual: str) -> str:
    damaged = find_damaged(read_entries(layer.tar_split), layer.diff_dir)
    where = (
        f"file {damaged!r} differs from what the layer recorded"
        if damaged
        else "the tar-split metadata does not rebuild it"
    )
    return (
        f"layer {layer.diff_id} (in {layer.diff_dir}) rebuilds to {actual}: {where}; "
        "the Docker data root is damaged, re-pull this image in Docker or skip it"
    )

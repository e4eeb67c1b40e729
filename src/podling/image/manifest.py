"""OCI / Docker schema 2 manifests, indexes and image configs, parsed into plain dataclasses.

Facts from the OCI image spec and Docker's schema 2: a manifest names one config blob
and an ordered list of layer blobs; an index (manifest list) names one manifest per
platform. Media types below are the protocol constants.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from podling.errors import InvalidArgument, NotFound

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What we send in Accept: every manifest and index type we can use.
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

LAYER_GZIP = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
LAYER_ZSTD = ("application/vnd.oci.image.layer.v1.tar+zstd",)
LAYER_PLAIN = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_json(d: Any) -> Descriptor:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
            raise InvalidArgument("malformed descriptor: expected an object with a digest")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"descriptor {d['digest']}: size must be a non-negative integer")
        return Descriptor(
            media_type=str(d.get("mediaType", "")),
            digest=d["digest"],
            size=size,
            platform=_object(d, "platform"),
            annotations=_object(d, "annotations"),
        )


def _object(d: dict[str, Any], key: str) -> dict[str, Any]:
    """Descriptor field `key`: a JSON object (or absent); anything else is InvalidArgument."""
    value = d.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"malformed descriptor {d['digest']}: {key} must be a JSON object")
    return value


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


def _load(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"manifest is not valid JSON: {e}") from e
    except RecursionError as e:  # the C decoder's nesting limit: hostile, not a manifest
        raise InvalidArgument("manifest is nested too deeply to be a manifest") from e
    if not isinstance(doc, dict):
        raise InvalidArgument("manifest is not a JSON object")
    return doc


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise InvalidArgument(f"manifest field {key!r} must be a JSON array")
    return value


def parse(data: bytes, media_type: str = "") -> Manifest | Index:
    """Parse a manifest or index. The body's mediaType wins over a missing/generic header."""
    doc = _load(data)
    mt = str(doc.get("mediaType") or media_type)
    if mt in INDEX_TYPES or (not mt and "manifests" in doc):
        mans = tuple(Descriptor.from_json(d) for d in _list(doc, "manifests"))
        return Index(media_type=mt or OCI_INDEX, manifests=mans)
    if mt in MANIFEST_TYPES or (not mt and "config" in doc):
        if doc.get("schemaVersion") != 2:
            raise InvalidArgument("only schemaVersion 2 manifests are supported")
        layers = tuple(Descriptor.from_json(d) for d in _list(doc, "layers"))
        return Manifest(mt or OCI_MANIFEST, Descriptor.from_json(doc.get("config")), layers)
    raise InvalidArgument(f"unsupported manifest media type {mt!r}")


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this machine in OCI/GOARCH terms."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    variant = {"aarch64": "v8", "armv7l": "v7"}.get(machine, "")
    return "linux", arch, variant


def select_platform(index: Index, want: tuple[str, str, str] | None = None) -> Descriptor:
    """Pick the index entry for `want` (default: this host). NotFound if there is none."""
    os_, arch, variant = want or host_platform()
    candidates = [
        d
        for d in index.manifests
        if d.platform.get("os") == os_ and d.platform.get("architecture") == arch
    ]
    exact = [d for d in candidates if not variant or d.platform.get("variant", variant) == variant]
    chosen = exact or candidates
    if not chosen:
        offered = sorted(
            f"{d.platform.get('os')}/{d.platform.get('architecture')}" for d in index.manifests
        )
        raise NotFound(f"image has no manifest for {os_}/{arch}; it offers {', '.join(offered)}")
    return chosen[0]


def parse_config(data: bytes) -> dict[str, Any]:
    """Parse an image config; checks that rootfs.diff_ids is a list of digests."""
    doc = _load(data)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidArgument("image config has no rootfs.diff_ids list")
    return doc

"""Read the images of a Docker data root (overlay2 storage driver) without root or a daemon.

Layout read (all under the data root, DRIVER = overlay2):
  image/DRIVER/repositories.json                 {"Repositories": {repo: {ref: image id}}}
  image/DRIVER/imagedb/content/sha256/<id hex>   the image config; its sha256 is the id
  image/DRIVER/layerdb/sha256/<chain id hex>/    diff, cache-id, tar-split.json.gz
  DRIVER/<cache-id>/diff/                        the layer's files (overlay upper dir)

Contract: `read_images` returns every image named in repositories.json, with its names
normalised (tags and `repo@digest` entries alike), each either complete (config verified
against its id, every layer's db entry present and its recorded diff id equal to the
config's) or carrying a `problem` that says why it cannot be imported. Layer *content* is
not read here: see tarsplit and layout. Images with no name are not listed (Docker shows
them as <none>; they are build intermediates or dangling). A root that is not an overlay2
data root raises FailedPrecondition.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podling.errors import FailedPrecondition, InvalidArgument, PodlingError
from podling.image.reference import parse_reference
from podling.services.unpacking import chain_ids

DRIVER = "overlay2"
_DIGEST_RE = re.compile(r"sha256:([a-f0-9]{64})")
_CACHE_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
_SMALL = 1 << 20


@dataclass(frozen=True)
class DockerLayer:
    """One layer: its diff id, chain id, overlay2 diff dir and tar-split file."""

    diff_id: str
    chain_id: str
    diff_dir: Path
    tar_split: Path


@dataclass(frozen=True)
class DockerImage:
    """An image named in repositories.json; `problem` is set if it cannot be imported."""

    id: str
    names: tuple[str, ...]
    config: bytes = b""
    layers: tuple[DockerLayer, ...] = ()
    problem: str | None = field(default=None)


def image_dir(root: Path) -> Path:
    """`root`/image/overlay2; FailedPrecondition if the data root uses no overlay2 store."""
    base = root / "image"
    found = base / DRIVER
    if found.is_dir():
        return found
    if not base.is_dir():
        raise FailedPrecondition(
            f"{root} is not a Docker data root (no image/ directory); pass --root with the "
            "directory dockerd uses (`docker info -f '{{.DockerRootDir}}'`)"
        )
    others = sorted(p.name for p in base.iterdir() if p.is_dir()) or ["none"]
    raise FailedPrecondition(
        f"{root} has no overlay2 image store (found: {', '.join(others)}); only the overlay2 "
        "storage driver can be migrated: `docker save` the images and `podling load` them"
    )


def read_images(root: Path) -> list[DockerImage]:
    """Every named image in the data root at `root`; see the module doc."""
    idir = image_dir(root)
    return [
        _read_image(root, idir, image_id, names)
        for image_id, names in _repositories(idir / "repositories.json").items()
    ]


def _repositories(path: Path) -> dict[str, list[str]]:
    """image id → the references naming it, in file order."""
    if not path.exists():
        return {}
    doc = _json(path)
    repos = doc.get("Repositories") if isinstance(doc, dict) else None
    if not isinstance(repos, dict):
        raise InvalidArgument(f'{path}: expected {{"Repositories": {{...}}}}')
    out: dict[str, list[str]] = {}
    for refs in repos.values():
        if not isinstance(refs, dict):
            raise InvalidArgument(f"{path}: each repository must map references to image ids")
        for ref, image_id in refs.items():
            out.setdefault(str(image_id), []).append(str(ref))
    return out


def _json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return json.loads(f.read(_SMALL))
    except OSError as e:
        raise FailedPrecondition(f"cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise InvalidArgument(f"{path} is not valid JSON: {e}") from e


def _read_image(root: Path, idir: Path, image_id: str, refs: list[str]) -> DockerImage:
    names = tuple(dict.fromkeys(refs))
    try:
        names = tuple(dict.fromkeys(str(parse_reference(r)) for r in refs))
        config = _read_config(idir, image_id)
        diff_ids = _diff_ids(config, image_id)
        layers = tuple(
            _read_layer(root, idir, chain, diff)
            for chain, diff in zip(chain_ids(diff_ids), diff_ids, strict=True)
        )
    except PodlingError as e:
        return DockerImage(image_id, names, problem=e.message)
    return DockerImage(image_id, names, config, layers)


def _hex(digest: str, what: str) -> str:
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise InvalidArgument(f"{what} {digest!r} is not a sha256 digest")
    return m.group(1)


def _read_config(idir: Path, image_id: str) -> bytes:
    path = idir / "imagedb" / "content" / "sha256" / _hex(image_id, "image id")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FailedPrecondition(f"image config {path} is unreadable: {e.strerror}") from e
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != image_id:
        raise InvalidArgument(f"image config {path} is corrupt: its sha256 is {actual}")
    return data


def _diff_ids(config: bytes, image_id: str) -> list[str]:
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArgument(f"image config {image_id} has no rootfs.diff_ids") from e
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"image config {image_id}: rootfs.diff_ids must be digests")
    for d in diff_ids:
        _hex(d, "diff id")
    return diff_ids


def _read_layer(root: Path, idir: Path, chain_id: str, diff_id: str) -> DockerLayer:
    entry = idir / "layerdb" / "sha256" / _hex(chain_id, "chain id")
    if not entry.is_dir():
        raise FailedPrecondition(f"layer {diff_id} (chain {chain_id}) is not in the layer db")
    recorded = _small_text(entry / "diff")
    if recorded != diff_id:
        raise InvalidArgument(
            f"layer db entry {entry} records diff id {recorded}, but the image needs {diff_id}"
        )
    cache_id = _small_text(entry / "cache-id")
    if not _CACHE_ID_RE.fullmatch(cache_id) or cache_id in (".", ".."):
        raise InvalidArgument(f"{entry}/cache-id holds an unsafe directory name {cache_id!r}")
    diff_dir = root / DRIVER / cache_id / "diff"
    if not diff_dir.is_dir():
        raise FailedPrecondition(f"layer {diff_id}: its files ({diff_dir}) are missing")
    tar_split = entry / "tar-split.json.gz"
    if not tar_split.is_file():
        raise FailedPrecondition(
            f"layer {diff_id} has no tar-split metadata ({tar_split}), so its original tar "
            "cannot be rebuilt and verified; `docker save` this image and `podling load` it"
        )
    return DockerLayer(diff_id, chain_id, diff_dir, tar_split)


def _small_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(4096).decode(errors="replace").strip()
    except OSError as e:
        raise FailedPrecondition(f"cannot read {path}: {e.strerror}") from e

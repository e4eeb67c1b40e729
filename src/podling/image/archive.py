"""Import images from archives: OCI image layouts and `docker save` output.

Accepted, auto-detected: an OCI image layout directory (oci-layout, index.json,
blobs/sha256/<hex>); the same packed as .tar or .tar.gz; a `docker save` archive (.tar or
.tar.gz) described by manifest.json. Docker 25+ writes an OCI layout *and* manifest.json:
then index.json is used, and manifest.json's RepoTags name the images with that config.

Contract: each returned image's config, layers and manifest are in the ContentStore,
verified against their digests (and sizes where known); a mismatch raises DataLoss. The
manifest is stored last, so an image whose content failed verification leaves no manifest.
For `docker save` a Docker schema 2 manifest is synthesised; plain layers must hash to the
config's diff_ids. The archive is never extracted: only members its metadata references
are read, streamed into the store. A referenced path that is absolute or contains '..',
or a link that leaves the archive or layout directory, raises UnsafeContent.

Names: `io.containerd.image.name` is a full reference. `org.opencontainers.image.ref.name`
counts only if it contains '/', ':' or '@' and parses as a reference; a bare word (usually
a tag such as "latest") has no repository, so it names nothing: the image stays unnamed
unless a full reference exists elsewhere (the other annotation, manifest.json RepoTags).
"""

from __future__ import annotations

import gzip
import json
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from podling.image import manifest as mf
from podling.image.archive_source import (
    JSON_LIMIT,
    DirSource,
    Source,
    TarSource,
    clean_path,
    copy_to_store,
    hash_file,
    read_json,
    read_small,
)
from podling.image.content import ContentStore, digest_hex, sha256_digest
from podling.image.reference import parse_reference

IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_PLAIN = "application/vnd.docker.image.rootfs.diff.tar"

_FORMATS = (
    "an OCI image layout (a directory, .tar or .tar.gz) or a `docker save` archive "
    "(.tar or .tar.gz)"
)
_MAX_NESTING = 4
_GZIP_MAGIC = b"\x1f\x8b"
_NAMED_DIGEST_RE = re.compile(r"(?:sha256:)?([a-f0-9]{64})(?:\.json)?")
# What a damaged tar or gzip stream raises while being read.
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class ArchiveImage:
    """One imported image: its names (normalised references) and its platform manifest."""

    names: tuple[str, ...]
    manifest_digest: str
    manifest: mf.Manifest


def import_archive(path: Path, store: ContentStore) -> list[ArchiveImage]:
    """Copy every image in the archive at `path` into `store`, verified; see module doc.

    NotFound if `path` does not exist; InvalidArgument for an unknown format, malformed
    metadata or a missing blob; DataLoss for content that does not match its digest or a
    truncated archive; UnsafeContent for references that would leave the archive.
    """
    if not path.exists():
        raise NotFound(f"image archive {path} does not exist")
    if path.is_dir():
        return _import_from(DirSource(path), store)
    if not path.is_file():
        raise InvalidArgument(
            f"{path} is neither a regular file nor a directory; expected {_FORMATS}"
        )
    try:
        with _open_tar(path) as tar:
            return _import_from(TarSource(tar, str(path)), store)
    except _CORRUPT as e:
        raise DataLoss(f"image archive {path} is truncated or corrupt ({e}); re-export it") from e


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except _CORRUPT as e:
        raise InvalidArgument(f"{path} is not {_FORMATS} ({e})") from e
    except OSError as e:
        raise FailedPrecondition(f"cannot read image archive {path}: {e.strerror}") from e


def _import_from(src: Source, store: ContentStore) -> list[ArchiveImage]:
    if src.exists("index.json") or src.exists("manifest.json"):
        images = _import_oci(src, store) if src.exists("index.json") else _import_docker(src, store)
        if not images:
            raise InvalidArgument(f"{src.label} lists no images")
        return images
    if src.exists("oci-layout"):
        raise InvalidArgument(f"{src.label}: has an oci-layout file but no index.json")
    raise InvalidArgument(
        f"{src.label} is not {_FORMATS}: it contains neither index.json nor manifest.json"
    )


def _parse_name(text: str, src: Source, where: str) -> str:
    try:
        return str(parse_reference(text))
    except InvalidArgument as e:
        raise InvalidArgument(f"{src.label}: {where}: {e.message}") from e


def _check_layers_match_config(config: bytes, count: int, where: str) -> list[Any]:
    diff_ids: list[Any] = mf.parse_config(config)["rootfs"]["diff_ids"]
    if len(diff_ids) != count:
        raise InvalidArgument(
            f"{where}: image config lists {len(diff_ids)} diff_ids but there are {count} layers"
        )
    return diff_ids


def _collect(
    found: dict[str, ArchiveImage], digest: str, man: mf.Manifest, names: list[str]
) -> None:
    """Record an image; entries resolving to the same manifest merge into one result."""
    known = found[digest].names if digest in found else ()
    merged = known + tuple(n for n in dict.fromkeys(names) if n not in known)
    found[digest] = ArchiveImage(merged, digest, man)


# --- OCI image layout ----------------------------------------------------------------


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest_hex(digest)}"


def _import_oci(src: Source, store: ContentStore) -> list[ArchiveImage]:
    _check_layout_version(src)
    index = mf.parse(read_small(src, "index.json"), mf.OCI_INDEX)
    if not isinstance(index, mf.Index):
        raise InvalidArgument(f"{src.label}: index.json is a manifest, not an image index")
    repo_tags = _repo_tags_by_config(src) if src.exists("manifest.json") else {}
    found: dict[str, ArchiveImage] = {}
    for entry in _host_entries(index):
        names = _entry_names(src, entry)
        desc, data, man = _resolve_manifest(src, entry, 0)
        _import_oci_content(src, store, man)
        store.put_bytes(data, desc.digest)
        _collect(found, desc.digest, man, names + repo_tags.get(man.config.digest, []))
    return list(found.values())


def _check_layout_version(src: Source) -> None:
    if not src.exists("oci-layout"):
        return  # required by the spec, but omitting it loses nothing we need
    doc = read_json(src, "oci-layout")
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidArgument(
            f"{src.label}: unsupported OCI layout version {version!r}; expected 1.x"
        )


def _host_entries(index: mf.Index) -> list[mf.Descriptor]:
    """index.json entries to import: of entries that carry a platform and the same names,
    only the host's (a flat multi-platform image); every other entry as is."""
    groups: dict[object, list[mf.Descriptor]] = {}
    for i, desc in enumerate(index.manifests):
        names = (
            desc.annotations.get(IMAGE_NAME_ANNOTATION),
            desc.annotations.get(REF_NAME_ANNOTATION),
        )
        groups.setdefault(names if desc.platform else i, []).append(desc)
    return [
        group[0]
        if len(group) == 1
        else mf.select_platform(mf.Index(index.media_type, tuple(group)))
        for group in groups.values()
    ]


def _entry_names(src: Source, desc: mf.Descriptor) -> list[str]:
    full = desc.annotations.get(IMAGE_NAME_ANNOTATION)
    if full:
        return [_parse_name(full, src, f"annotation {IMAGE_NAME_ANNOTATION}")]
    ref = desc.annotations.get(REF_NAME_ANNOTATION, "")
    if any(c in ref for c in "/:@"):
        try:
            return [str(parse_reference(ref))]
        except InvalidArgument:
            return []  # an OCI ref name need not be a Docker reference: leave it unnamed
    return []


def _read_blob(src: Source, desc: mf.Descriptor) -> bytes:
    """A small blob (manifest, index, config), verified against its descriptor in memory."""
    name = _blob_name(desc.digest)
    if desc.size > JSON_LIMIT:
        raise InvalidArgument(f"{src.label}: {name}: {desc.size} bytes is too large for metadata")
    data = read_small(src, name)
    actual = sha256_digest(data)
    if len(data) != desc.size or actual != desc.digest:
        raise DataLoss(
            f"{src.label}: {name} has {len(data)} bytes with digest {actual}, but its "
            f"descriptor says {desc.size} bytes with digest {desc.digest}"
        )
    return data


def _resolve_manifest(
    src: Source, desc: mf.Descriptor, depth: int
) -> tuple[mf.Descriptor, bytes, mf.Manifest]:
    """Follow nested indexes down to the host platform's manifest."""
    data = _read_blob(src, desc)
    doc = mf.parse(data, desc.media_type)
    if isinstance(doc, mf.Manifest):
        return desc, data, doc
    if depth >= _MAX_NESTING:
        raise InvalidArgument(f"{src.label}: indexes nested more than {_MAX_NESTING} deep")
    return _resolve_manifest(src, mf.select_platform(doc), depth + 1)


def _import_oci_content(src: Source, store: ContentStore, man: mf.Manifest) -> None:
    config = _read_blob(src, man.config)
    _check_layers_match_config(config, len(man.layers), f"{src.label}: {man.config.digest}")
    store.put_bytes(config, man.config.digest)
    for layer in sorted(man.layers, key=lambda d: src.position(_blob_name(d.digest))):
        copy_to_store(src, _blob_name(layer.digest), store, layer.digest, layer.size)


# --- docker save ---------------------------------------------------------------------


def _docker_entries(src: Source) -> list[dict[str, Any]]:
    doc = read_json(src, "manifest.json")
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise InvalidArgument(
            f"{src.label}: manifest.json is not a `docker save` manifest (a list of objects); "
            f"expected {_FORMATS}"
        )
    return doc


def _repo_tags(src: Source, entry: dict[str, Any]) -> list[str]:
    tags = entry.get("RepoTags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArgument(f"{src.label}: manifest.json RepoTags must be a list of strings")
    return [_parse_name(t, src, "manifest.json RepoTags") for t in tags]


def _repo_tags_by_config(src: Source) -> dict[str, list[str]]:
    """manifest.json RepoTags keyed by config digest (for Docker 25+ OCI-style archives)."""
    out: dict[str, list[str]] = {}
    for entry in _docker_entries(src):
        digest = _named_digest(str(entry.get("Config", "")))
        if digest is not None:
            out.setdefault(digest, []).extend(_repo_tags(src, entry))
    return out


def _import_docker(src: Source, store: ContentStore) -> list[ArchiveImage]:
    found: dict[str, ArchiveImage] = {}
    for entry in _docker_entries(src):
        digest, man = _import_docker_entry(src, store, entry)
        _collect(found, digest, man, _repo_tags(src, entry))
    return list(found.values())


def _import_docker_entry(
    src: Source, store: ContentStore, entry: dict[str, Any]
) -> tuple[str, mf.Manifest]:
    config_field, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_field, str) or not isinstance(layers, list):
        raise InvalidArgument(f"{src.label}: manifest.json entry needs Config and Layers")
    if not all(isinstance(name, str) for name in layers):
        raise InvalidArgument(f"{src.label}: manifest.json Layers must be file names")
    config_name = clean_path(config_field, src.label)
    layer_names = [clean_path(name, src.label) for name in layers]
    config = read_small(src, config_name)
    config_digest = _verify_named(src, config_name, config)
    diff_ids = _check_layers_match_config(config, len(layer_names), f"{src.label}: {config_name}")
    descs: dict[int, mf.Descriptor] = {}
    for i in sorted(range(len(layer_names)), key=lambda i: src.position(layer_names[i])):
        descs[i] = _import_docker_layer(src, store, layer_names[i], diff_ids[i])
    config_desc = mf.Descriptor(mf.DOCKER_CONFIG, config_digest, len(config))
    store.put_bytes(config, config_digest)
    man = mf.Manifest(mf.DOCKER_MANIFEST, config_desc, tuple(descs[i] for i in sorted(descs)))
    return store.put_bytes(_manifest_json(man)), man


def _named_digest(name: str) -> str | None:
    """The digest a `docker save` file name carries ("<hex>.json", "sha256:<hex>"), if any."""
    m = _NAMED_DIGEST_RE.fullmatch(posixpath.basename(name))
    return f"sha256:{m.group(1)}" if m is not None else None


def _verify_named(src: Source, name: str, data: bytes) -> str:
    """The digest of `data`; DataLoss if the file name carries a different one."""
    digest = sha256_digest(data)
    named = _named_digest(name)
    if named is not None and named != digest:
        raise DataLoss(f"{src.label}: {name} is corrupt: its content has digest {digest}")
    return digest


def _import_docker_layer(
    src: Source, store: ContentStore, name: str, diff_id: Any
) -> mf.Descriptor:
    """Store one layer. A plain tar must hash to its diff_id; a gzipped one is hashed first."""
    with src.open(name) as f:
        gzipped = f.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
    size = src.size(name)
    if gzipped:
        media_type, digest = DOCKER_LAYER_GZIP, hash_file(src, name)
    else:
        media_type, digest = DOCKER_LAYER_PLAIN, str(diff_id)  # ingest rejects a non-digest
    copy_to_store(src, name, store, digest, size)
    return mf.Descriptor(media_type, digest, size)


def _manifest_json(man: mf.Manifest) -> bytes:
    """A Docker schema 2 manifest for `man`; deterministic, so re-imports dedupe."""

    def desc(d: mf.Descriptor) -> dict[str, Any]:
        return {"mediaType": d.media_type, "size": d.size, "digest": d.digest}

    doc = {
        "schemaVersion": 2,
        "mediaType": man.media_type,
        "config": desc(man.config),
        "layers": [desc(layer) for layer in man.layers],
    }
    return json.dumps(doc, indent=3).encode()

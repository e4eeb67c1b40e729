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
import hashlib
import json
import posixpath
import re
import tarfile
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from podling.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, UnsafeContent
from podling.image import manifest as mf
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
_JSON_LIMIT = 16 << 20  # manifests, indexes and configs are far smaller; refuse to buffer more
_CHUNK = 1 << 20
_MAX_LINKS = 8
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
        return _import_from(_DirSource(path), store)
    if not path.is_file():
        raise InvalidArgument(
            f"{path} is neither a regular file nor a directory; expected {_FORMATS}"
        )
    try:
        with _open_tar(path) as tar:
            return _import_from(_TarSource(tar, str(path)), store)
    except _CORRUPT as e:
        raise DataLoss(f"image archive {path} is truncated or corrupt ({e}); re-export it") from e


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except _CORRUPT as e:
        raise InvalidArgument(f"{path} is not {_FORMATS} ({e})") from e
    except OSError as e:
        raise FailedPrecondition(f"cannot read image archive {path}: {e.strerror}") from e


def _import_from(src: _Source, store: ContentStore) -> list[ArchiveImage]:
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


# --- reading the archive -------------------------------------------------------------


def _normalise(name: str) -> str | None:
    """`name` as a path relative to the archive root, or None if it would leave it."""
    norm = posixpath.normpath(name)
    if not name or norm.startswith("/") or norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


def _clean(name: str, label: str) -> str:
    """A path the archive's metadata references; UnsafeContent if it is absolute or has '..'."""
    norm = _normalise(name)
    if norm is None or ".." in name.split("/"):
        raise UnsafeContent(
            f"{label}: refuses path {name!r}: archive paths must be relative and must not "
            "contain '..'; the archive may be hostile"
        )
    return norm


class _Source(ABC):
    """Read-only access to an archive's regular files, by path relative to its root.

    `_locate` returns a handle, None when the file is missing, or raises UnsafeContent.
    """

    def __init__(self, label: str) -> None:
        self.label = label

    @abstractmethod
    def _locate(self, name: str) -> Any: ...

    def _need(self, name: str) -> Any:
        handle = self._locate(name)
        if handle is None:
            raise InvalidArgument(
                f"{self.label}: {name} is missing; the archive is incomplete, export it again"
            )
        return handle

    def exists(self, name: str) -> bool:
        return self._locate(name) is not None

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def open(self, name: str) -> IO[bytes]: ...

    def position(self, name: str) -> int:
        """Where `name` lies in the archive: reading in this order avoids re-seeking."""
        return 0


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self._root = root.resolve()

    def _locate(self, name: str) -> Path | None:
        try:
            real = (self._root / _clean(name, self.label)).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not real.is_relative_to(self._root):
            raise UnsafeContent(f"{self.label}: {name} is a symlink that leaves the directory")
        return real if real.is_file() else None

    def size(self, name: str) -> int:
        return int(self._need(name).stat().st_size)

    def open(self, name: str) -> IO[bytes]:
        path: Path = self._need(name)
        return path.open("rb")


class _TarSource(_Source):
    def __init__(self, tar: tarfile.TarFile, label: str) -> None:
        super().__init__(label)
        self._tar = tar
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            key = _normalise(member.name)
            if key is not None and ".." not in member.name.split("/"):
                self._members[key] = member  # like tar itself, a later duplicate wins

    def _locate(self, name: str) -> tarfile.TarInfo | None:
        """The regular-file member `name` denotes, following links inside the archive
        (`docker save` links duplicate layers to one copy)."""
        key = _clean(name, self.label)
        for _ in range(_MAX_LINKS):
            member = self._members.get(key)
            if member is None or not (member.issym() or member.islnk()):
                return member if member is not None and member.isreg() else None
            target = member.linkname
            if member.issym():
                target = posixpath.join(posixpath.dirname(key), target)
            resolved = _normalise(target)
            if resolved is None:
                raise UnsafeContent(f"{self.label}: {name} links to {member.linkname!r} outside it")
            key = resolved
        raise UnsafeContent(f"{self.label}: {name}: more than {_MAX_LINKS} levels of links")

    def size(self, name: str) -> int:
        return int(self._need(name).size)

    def open(self, name: str) -> IO[bytes]:
        reader = self._tar.extractfile(self._need(name))
        assert reader is not None  # _locate only returns regular files
        return reader

    def position(self, name: str) -> int:
        return int(self._need(name).offset_data)


def _read_small(src: _Source, name: str) -> bytes:
    if src.size(name) > _JSON_LIMIT:
        raise InvalidArgument(f"{src.label}: {name} is larger than {_JSON_LIMIT} bytes")
    with src.open(name) as f:
        return f.read()


def _read_json(src: _Source, name: str) -> Any:
    try:
        return json.loads(_read_small(src, name))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{src.label}: {name} is not valid JSON: {e}") from e


def _copy(src: _Source, name: str, store: ContentStore, digest: str, size: int | None) -> None:
    """Stream `name` into the store as `digest`; DataLoss (naming the file) on mismatch."""
    if store.has(digest):
        return
    ingest = store.ingest(digest, size)
    try:
        ingest.reset()
        with src.open(name) as f:
            while chunk := f.read(_CHUNK):
                ingest.write(chunk)
        ingest.commit()
    except DataLoss as e:
        ingest.abort()
        raise DataLoss(f"{src.label}: {name}: {e.message}") from e
    except BaseException:
        ingest.abort()
        raise


def _hash(src: _Source, name: str) -> str:
    h = hashlib.sha256()
    with src.open(name) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _parse_name(text: str, src: _Source, where: str) -> str:
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


def _import_oci(src: _Source, store: ContentStore) -> list[ArchiveImage]:
    _check_layout_version(src)
    index = mf.parse(_read_small(src, "index.json"), mf.OCI_INDEX)
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


def _check_layout_version(src: _Source) -> None:
    if not src.exists("oci-layout"):
        return  # required by the spec, but omitting it loses nothing we need
    doc = _read_json(src, "oci-layout")
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


def _entry_names(src: _Source, desc: mf.Descriptor) -> list[str]:
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


def _read_blob(src: _Source, desc: mf.Descriptor) -> bytes:
    """A small blob (manifest, index, config), verified against its descriptor in memory."""
    name = _blob_name(desc.digest)
    if desc.size > _JSON_LIMIT:
        raise InvalidArgument(f"{src.label}: {name}: {desc.size} bytes is too large for metadata")
    data = _read_small(src, name)
    actual = sha256_digest(data)
    if len(data) != desc.size or actual != desc.digest:
        raise DataLoss(
            f"{src.label}: {name} has {len(data)} bytes with digest {actual}, but its "
            f"descriptor says {desc.size} bytes with digest {desc.digest}"
        )
    return data


def _resolve_manifest(
    src: _Source, desc: mf.Descriptor, depth: int
) -> tuple[mf.Descriptor, bytes, mf.Manifest]:
    """Follow nested indexes down to the host platform's manifest."""
    data = _read_blob(src, desc)
    doc = mf.parse(data, desc.media_type)
    if isinstance(doc, mf.Manifest):
        return desc, data, doc
    if depth >= _MAX_NESTING:
        raise InvalidArgument(f"{src.label}: indexes nested more than {_MAX_NESTING} deep")
    return _resolve_manifest(src, mf.select_platform(doc), depth + 1)


def _import_oci_content(src: _Source, store: ContentStore, man: mf.Manifest) -> None:
    config = _read_blob(src, man.config)
    _check_layers_match_config(config, len(man.layers), f"{src.label}: {man.config.digest}")
    store.put_bytes(config, man.config.digest)
    for layer in sorted(man.layers, key=lambda d: src.position(_blob_name(d.digest))):
        _copy(src, _blob_name(layer.digest), store, layer.digest, layer.size)


# --- docker save ---------------------------------------------------------------------


def _docker_entries(src: _Source) -> list[dict[str, Any]]:
    doc = _read_json(src, "manifest.json")
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise InvalidArgument(
            f"{src.label}: manifest.json is not a `docker save` manifest (a list of objects); "
            f"expected {_FORMATS}"
        )
    return doc


def _repo_tags(src: _Source, entry: dict[str, Any]) -> list[str]:
    tags = entry.get("RepoTags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArgument(f"{src.label}: manifest.json RepoTags must be a list of strings")
    return [_parse_name(t, src, "manifest.json RepoTags") for t in tags]


def _repo_tags_by_config(src: _Source) -> dict[str, list[str]]:
    """manifest.json RepoTags keyed by config digest (for Docker 25+ OCI-style archives)."""
    out: dict[str, list[str]] = {}
    for entry in _docker_entries(src):
        m = _NAMED_DIGEST_RE.fullmatch(posixpath.basename(str(entry.get("Config", ""))))
        if m is not None:
            out.setdefault(f"sha256:{m.group(1)}", []).extend(_repo_tags(src, entry))
    return out


def _import_docker(src: _Source, store: ContentStore) -> list[ArchiveImage]:
    found: dict[str, ArchiveImage] = {}
    for entry in _docker_entries(src):
        digest, man = _import_docker_entry(src, store, entry)
        _collect(found, digest, man, _repo_tags(src, entry))
    return list(found.values())


def _import_docker_entry(
    src: _Source, store: ContentStore, entry: dict[str, Any]
) -> tuple[str, mf.Manifest]:
    config_field, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_field, str) or not isinstance(layers, list):
        raise InvalidArgument(f"{src.label}: manifest.json entry needs Config and Layers")
    if not all(isinstance(name, str) for name in layers):
        raise InvalidArgument(f"{src.label}: manifest.json Layers must be file names")
    config_name = _clean(config_field, src.label)
    layer_names = [_clean(name, src.label) for name in layers]
    config = _read_small(src, config_name)
    config_digest = _verify_named(src, config_name, config)
    diff_ids = _check_layers_match_config(config, len(layer_names), f"{src.label}: {config_name}")
    descs: dict[int, mf.Descriptor] = {}
    for i in sorted(range(len(layer_names)), key=lambda i: src.position(layer_names[i])):
        descs[i] = _import_docker_layer(src, store, layer_names[i], diff_ids[i])
    config_desc = mf.Descriptor(mf.DOCKER_CONFIG, config_digest, len(config))
    store.put_bytes(config, config_digest)
    man = mf.Manifest(mf.DOCKER_MANIFEST, config_desc, tuple(descs[i] for i in sorted(descs)))
    return store.put_bytes(_manifest_json(man)), man


def _verify_named(src: _Source, name: str, data: bytes) -> str:
    """The digest of `data`; DataLoss if the file name carries a different one."""
    digest = sha256_digest(data)
    m = _NAMED_DIGEST_RE.fullmatch(posixpath.basename(name))
    if m is not None and f"sha256:{m.group(1)}" != digest:
        raise DataLoss(f"{src.label}: {name} is corrupt: its content has digest {digest}")
    return digest


def _import_docker_layer(
    src: _Source, store: ContentStore, name: str, diff_id: Any
) -> mf.Descriptor:
    """Store one layer. A plain tar must hash to its diff_id; a gzipped one is hashed first."""
    with src.open(name) as f:
        gzipped = f.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
    size = src.size(name)
    if gzipped:
        media_type, digest = DOCKER_LAYER_GZIP, _hash(src, name)
    else:
        media_type, digest = DOCKER_LAYER_PLAIN, str(diff_id)  # ingest rejects a non-digest
    _copy(src, name, store, digest, size)
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

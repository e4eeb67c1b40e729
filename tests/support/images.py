"""Build and push deterministic test images (busybox-static based) without docker.

Everything is byte-stable: tar entries have fixed mtimes/owners, gzip has mtime 0,
JSON is serialised with sorted keys. So digests are the same on every run.

    base = busybox_rootfs_layer()
    extra = layer({"etc/motd": b"hi\\n", "tmp/old": Whiteout()})
    img = build_image([base, extra], "gzip", {"Cmd": ["sh"]})
    push_image(reg.url, "app", "v1", img)
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

BUSYBOX = Path("/usr/bin/busybox")
MTIME = 1_700_000_000
BUSYBOX_APPLETS = (
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "id",
    "env",
    "nc",
    "httpd",
    "hostname",
    "head",
    "tr",
    "dd",
    "kill",
    "ps",
    "grep",
    "mkdir",
    "touch",
    "rm",
    "printf",
    "wc",
    "unshare",
    "readlink",
    "ip",
    "chmod",
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
}


# ---- layer contents ---------------------------------------------------------------


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str  # path inside the layer, e.g. "bin/busybox"


@dataclass(frozen=True)
class Whiteout:
    """Deletes the path from lower layers: emitted as `.wh.<name>`."""


@dataclass(frozen=True)
class Opaque:
    """Marks the directory opaque (hides lower contents): emitted as `<dir>/.wh..wh..opq`."""


Spec = bytes | File | Dir | Symlink | Hardlink | Whiteout | Opaque


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, MTIME
    ti.uname = ti.gname = ""
    return ti


def _entry(path: str, spec: Spec) -> tuple[tarfile.TarInfo, bytes | None]:
    path = path.strip("/")
    if isinstance(spec, bytes):
        spec = File(spec)
    if isinstance(spec, File):
        ti = _info(path, tarfile.REGTYPE, spec.mode, spec.uid, spec.gid)
        ti.size = len(spec.data)
        return ti, spec.data
    if isinstance(spec, Dir):
        return _info(path, tarfile.DIRTYPE, spec.mode, spec.uid, spec.gid), None
    if isinstance(spec, Symlink):
        ti = _info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = spec.target
        return ti, None
    if isinstance(spec, Hardlink):
        ti = _info(path, tarfile.LNKTYPE, 0o644)
        ti.linkname = spec.target.strip("/")
        return ti, None
    parent, _, base = path.rpartition("/")
    prefix = parent + "/" if parent else ""
    if isinstance(spec, Whiteout):
        return _info(f"{prefix}.wh.{base}", tarfile.REGTYPE, 0o644), b""
    return _info(f"{path}/.wh..wh..opq", tarfile.REGTYPE, 0o644), b""


def layer(files: Mapping[str, Spec]) -> bytes:
    """An uncompressed layer tar with the entries in the given order.

    Parent directories are NOT added implicitly (list them as Dir() when wanted).
    bytes values are regular files with mode 0644.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, spec in files.items():
            ti, data = _entry(path, spec)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"app:x:1000:1000:app:/home/app:/bin/sh\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"


@functools.cache
def busybox_rootfs_layer() -> bytes:
    """A minimal rootfs: /bin/busybox + applet symlinks, /etc/passwd+group, /tmp, /root."""
    files: dict[str, Spec] = {"bin": Dir(), "bin/busybox": File(BUSYBOX.read_bytes(), 0o755)}
    files.update({f"bin/{a}": Symlink("busybox") for a in BUSYBOX_APPLETS})
    files.update(
        {
            "dev": Dir(),
            "etc": Dir(),
            "etc/passwd": PASSWD,
            "etc/group": GROUP,
            "home": Dir(),
            "home/app": Dir(0o755, 1000, 1000),
            "proc": Dir(),
            "root": Dir(0o700),
            "sys": Dir(),
            "tmp": Dir(0o1777),
        }
    )
    return layer(files)


def compress(tar: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if compression == "zstd":
        return bytes(zstandard.ZstdCompressor(level=3).compress(tar))
    if compression == "none":
        return tar
    raise ValueError(f"unknown compression {compression!r}")


# ---- images ---------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    arch: str
    os: str = "linux"
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes: config + layers

    @property
    def config_digest(self) -> str:
        return self.config.digest


def build_image(
    layers: Sequence[bytes],
    compression: str | Sequence[str] = "gzip",
    config: Mapping[str, Any] | None = None,
    media: str = "oci",
    arch: str = "amd64",
) -> BuiltImage:
    """An image from uncompressed layer tars; `compression` may be per layer."""
    kinds = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    blobs = []
    for tar, kind in zip(layers, kinds, strict=True):
        if (media, kind) not in LAYER_TYPES:
            raise ValueError(f"no {media} layer media type for {kind}")
        data = compress(tar, kind)
        blobs.append(Blob(LAYER_TYPES[(media, kind)], data, sha256(data)))
    diff_ids = tuple(sha256(tar) for tar in layers)
    cfg_doc = {
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "tests"} for _ in layers],
    }
    cfg_data = canonical_json(cfg_doc)
    cfg = Blob(OCI_CONFIG if media == "oci" else DOCKER_CONFIG, cfg_data, sha256(cfg_data))
    man_type = OCI_MANIFEST if media == "oci" else DOCKER_MANIFEST
    man = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": man_type,
            "config": cfg.descriptor(),
            "layers": [b.descriptor() for b in blobs],
        }
    )
    return BuiltImage(
        manifest=man,
        manifest_digest=sha256(man),
        manifest_media_type=man_type,
        config=cfg,
        layers=tuple(blobs),
        diff_ids=diff_ids,
        arch=arch,
        blobs={b.digest: b.data for b in (cfg, *blobs)},
    )


@dataclass(frozen=True)
class BuiltIndex:
    data: bytes
    digest: str
    media_type: str
    images: dict[str, BuiltImage]


def build_index(images: Mapping[str, BuiltImage], media: str = "oci") -> BuiltIndex:
    """An index over {"linux/amd64": img, ...}; each entry's platform comes from the key."""
    entries = []
    for plat, img in images.items():
        os_, arch, *variant = plat.split("/")
        platform = {"os": os_, "architecture": arch}
        if variant:
            platform["variant"] = variant[0]
        entries.append(
            {
                "mediaType": img.manifest_media_type,
                "digest": img.manifest_digest,
                "size": len(img.manifest),
                "platform": platform,
            }
        )
    media_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    data = canonical_json({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return BuiltIndex(data, sha256(data), media_type, dict(images))


# ---- pushing (distribution API) ---------------------------------------------------------


def _request(
    url: str,
    method: str,
    auth: tuple[str, str] | None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str]]:
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = (
            "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        )
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        if method == "HEAD" and e.code == 404:
            return 404, dict(e.headers)
        body = e.read().decode(errors="replace")
        raise RuntimeError(f"{method} {url}: HTTP {e.code}: {body}") from e


def push_blob(
    registry_url: str, repo: str, data: bytes, auth: tuple[str, str] | None = None
) -> str:
    """Monolithic upload (POST then PUT ?digest=); skipped if the blob exists."""
    digest = sha256(data)
    base = f"{registry_url}/v2/{repo}/blobs/"
    if _request(base + digest, "HEAD", auth)[0] == 200:
        return digest
    _, headers = _request(base + "uploads/", "POST", auth, b"")
    location = urllib.parse.urljoin(registry_url, headers["Location"])
    sep = "&" if "?" in location else "?"
    _request(
        f"{location}{sep}digest={urllib.parse.quote(digest)}",
        "PUT",
        auth,
        data,
        {"Content-Type": "application/octet-stream"},
    )
    return digest


def push_manifest(
    registry_url: str,
    repo: str,
    ref: str,
    data: bytes,
    media_type: str,
    auth: tuple[str, str] | None = None,
) -> str:
    url = f"{registry_url}/v2/{repo}/manifests/{ref}"
    _request(url, "PUT", auth, data, {"Content-Type": media_type})
    return sha256(data)


def push_image(
    registry_url: str,
    repo: str,
    tag: str | None,
    image: BuiltImage,
    auth: tuple[str, str] | None = None,
) -> str:
    """Push blobs and manifest (by tag, or by digest when tag is None); returns its digest."""
    for data in image.blobs.values():
        push_blob(registry_url, repo, data, auth)
    ref = tag or image.manifest_digest
    return push_manifest(registry_url, repo, ref, image.manifest, image.manifest_media_type, auth)


def push_index(
    registry_url: str,
    repo: str,
    tag: str,
    images: Mapping[str, BuiltImage],
    auth: tuple[str, str] | None = None,
    media: str = "oci",
) -> BuiltIndex:
    """Push every platform image by digest, then the index under `tag`."""
    index = build_index(images, media)
    for img in images.values():
        push_image(registry_url, repo, None, img, auth)
    push_manifest(registry_url, repo, tag, index.data, index.media_type, auth)
    return index


def two_platform_images(compression: str = "gzip") -> dict[str, BuiltImage]:
    """linux/amd64 and linux/arm64 images that differ in a marker file."""
    base = busybox_rootfs_layer()
    return {
        f"linux/{arch}": build_image(
            [base, layer({"etc/arch": arch.encode()})], compression, {"Cmd": ["sh"]}, arch=arch
        )
        for arch in ("amd64", "arm64")
    }


# ---- archives (for `podling load`) -------------------------------------------------------


def write_oci_archive(image: BuiltImage, name: str, dest: Path) -> Path:
    """Write `image` as an OCI image layout tar, named `name` (a full reference)."""
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": image.manifest_media_type,
                    "digest": image.manifest_digest,
                    "size": len(image.manifest),
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    )
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for digest, data in {image.manifest_digest: image.manifest, **image.blobs}.items():
        files[f"blobs/sha256/{digest.removeprefix('sha256:')}"] = data
    with tarfile.open(dest, "w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest

"""Build small image archives for tests: OCI layouts (dir, tar, tar.gz) and `docker save` tars.

Everything is built in memory as {archive path: bytes} and then written out with
`write_dir` or `write_tar`, so a test can corrupt or drop any file before writing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A deterministic plain tar holding `files`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@dataclass
class Image:
    """One single-platform image: config, layers (as stored) and its OCI manifest."""

    config: bytes
    layers: list[bytes]
    gzipped: list[bool]
    manifest: bytes
    arch: str

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [digest_of(layer) for layer in self.layers]

    @property
    def manifest_digest(self) -> str:
        return digest_of(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        """Blob files of this image, keyed by layout path."""
        out = {blob_path(digest_of(b)): b for b in (self.config, *self.layers)}
        out[blob_path(self.manifest_digest)] = self.manifest
        return out

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        desc = {"mediaType": OCI_MANIFEST, "digest": self.manifest_digest}
        return {**desc, "size": len(self.manifest), **extra}


def blob_path(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def make_image(
    layer_files: list[dict[str, bytes]], *, gzip_layers: bool = False, arch: str = "amd64"
) -> Image:
    """An image whose layers hold `layer_files`; diff_ids are those of the plain tars."""
    plain = [tar_bytes(files) for files in layer_files]
    layers = [gzip_bytes(p) if gzip_layers else p for p in plain]
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(p) for p in plain]},
        }
    ).encode()
    layer_type = OCI_LAYER_GZIP if gzip_layers else OCI_LAYER
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": layer_type, "digest": digest_of(b), "size": len(b)} for b in layers
            ],
        }
    ).encode()
    return Image(config, layers, [gzip_layers] * len(layers), manifest, arch)


def index_json(descriptors: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    ).encode()


def oci_layout(entries: list[tuple[Image, dict[str, str]]]) -> dict[str, bytes]:
    """An OCI layout whose index.json lists each image with the given annotations."""
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    descs = []
    for image, notes in entries:
        files.update(image.blobs())
        descs.append(image.descriptor(annotations=notes) if notes else image.descriptor())
    files["index.json"] = index_json(descs)
    return files


def platform(image: Image) -> dict[str, str]:
    return {"os": "linux", "architecture": image.arch}


def multi_platform_layout(
    images: list[Image], annotations: dict[str, str]
) -> tuple[dict[str, bytes], str]:
    """A layout whose index.json points at a nested index listing one manifest per image.

    Returns the files and the nested index's digest.
    """
    nested = index_json([im.descriptor(platform=platform(im)) for im in images])
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', blob_path(digest_of(nested)): nested}
    for image in images:
        files.update(image.blobs())
    top = {"mediaType": OCI_INDEX, "digest": digest_of(nested), "size": len(nested)}
    files["index.json"] = index_json([{**top, "annotations": annotations}])
    return files, digest_of(nested)


def docker_save(entries: list[tuple[Image, list[str] | None]]) -> dict[str, bytes]:
    """A legacy `docker save` archive: <config hex>.json, <v1 id>/layer.tar, manifest.json."""
    files: dict[str, bytes] = {}
    manifest = []
    for n, (image, tags) in enumerate(entries):
        config_name = f"{hex_of(image.config_digest)}.json"
        files[config_name] = image.config
        layer_names = []
        for i, layer in enumerate(image.layers):
            layer_dir = hashlib.sha256(f"v1-{n}-{i}".encode()).hexdigest()
            files[f"{layer_dir}/VERSION"] = b"1.0"
            files[f"{layer_dir}/layer.tar"] = layer
            layer_names.append(f"{layer_dir}/layer.tar")
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


def docker_save_oci(image: Image, tags: list[str]) -> dict[str, bytes]:
    """A Docker 25+ `docker save`: an OCI layout without name annotations plus manifest.json."""
    files = oci_layout([(image, {})])
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": blob_path(image.config_digest),
                "RepoTags": tags,
                "Layers": [blob_path(d) for d in image.layer_digests],
            }
        ]
    ).encode()
    return files


def write_dir(files: dict[str, bytes], root: Path) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_tar(
    files: dict[str, bytes],
    dest: Path,
    *,
    gz: bool = False,
    prefix: str = "",
    symlinks: dict[str, str] | None = None,
) -> Path:
    """Pack `files` (each name prefixed by `prefix`, e.g. "./") and `symlinks` (name -> target)."""
    with tarfile.open(dest, "w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(prefix + name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return dest

"""Build a small Docker data root (overlay2) in a directory, as dockerd would leave it.

Layers are tars built with tarfile; each is recorded in the layer db with a tar-split file
generated here from the tar itself, and "applied" to an overlay2 diff dir. Whiteouts
(`.wh.NAME`) become 0/0 character devices only when `devices=True` (needs root); otherwise
they are left out of the diff dir, which the importer never reads for empty members.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from podling.dockermigrate.tarsplit import crc64_iso
from podling.services.unpacking import chain_ids

# One member: path → bytes (a file), None (a directory) or "->target" str (a symlink).
Files = dict[str, bytes | str | None]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: Files) -> bytes:
    """A PAX tar of `files` (in order), with fixed metadata like Docker's layers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = 1_700_000_000, 0, 0
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def tar_split(layer: bytes) -> bytes:
    """tar-split.json.gz for `layer`: raw segments and file entries, as Docker records them."""
    lines: list[dict[str, object]] = []
    pos = 0

    def segment(end: int) -> None:
        payload = base64.b64encode(layer[pos:end]).decode()
        lines.append({"type": 2, "payload": payload, "position": len(lines)})

    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        for m in tar.getmembers():
            segment(m.offset_data)
            pos = m.offset_data
            data = layer[pos : pos + m.size]
            crc = base64.b64encode(crc64_iso(data).to_bytes(8, "big")).decode() if m.size else None
            lines.append(
                {"type": 1, "name": m.name, "size": m.size, "payload": crc, "position": len(lines)}
            )
            pos += m.size
    segment(len(layer))
    text = "".join(json.dumps(line) + "\n" for line in lines)
    return gzip.compress(text.encode())


@dataclass
class DockerRoot:
    """A data root under `root`; `add_image` records images, `write_repositories` names them."""

    root: Path
    devices: bool = False

    def __post_init__(self) -> None:
        self.images_dir = self.root / "image" / "overlay2"
        self.repos: dict[str, dict[str, str]] = {}

    def add_layer(self, parent_chain: str | None, layer: bytes) -> str:
        """Record one layer on top of `parent_chain`; returns its chain id."""
        diff_id = sha(layer)
        chain = chain_ids([parent_chain, diff_id])[1] if parent_chain else diff_id
        entry = self.images_dir / "layerdb" / "sha256" / chain.removeprefix("sha256:")
        if entry.exists():
            return chain
        entry.mkdir(parents=True)
        cache_id = hashlib.sha256(chain.encode()).hexdigest()
        (entry / "diff").write_text(diff_id)
        (entry / "cache-id").write_text(cache_id)
        (entry / "size").write_text(str(len(layer)))
        if parent_chain:
            (entry / "parent").write_text(parent_chain)
        (entry / "tar-split.json.gz").write_bytes(tar_split(layer))
        self._apply(layer, self.root / "overlay2" / cache_id / "diff")
        return chain

    def _apply(self, layer: bytes, diff: Path) -> None:
        diff.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
            for m in tar.getmembers():
                base = os.path.basename(m.name)
                if base == ".wh..wh..opq":
                    if self.devices:
                        os.setxattr(diff / os.path.dirname(m.name), "trusted.overlay.opaque", b"y")
                elif base.startswith(".wh."):
                    if self.devices:
                        target = diff / os.path.dirname(m.name) / base.removeprefix(".wh.")
                        os.mknod(target, 0o20000 | 0o600, os.makedev(0, 0))
                else:
                    tar.extract(m, diff, filter="tar")

    def add_image(self, layers: list[bytes], refs: list[str]) -> str:
        """Record an image of `layers` named by `refs` (e.g. 'busybox:1'); its image id."""
        chain: str | None = None
        for layer in layers:
            chain = self.add_layer(chain, layer)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
            }
        ).encode()
        image_id = sha(config)
        content = self.images_dir / "imagedb" / "content" / "sha256"
        content.mkdir(parents=True, exist_ok=True)
        (content / image_id.removeprefix("sha256:")).write_bytes(config)
        for ref in refs:
            self.repos.setdefault(_repo(ref), {})[ref] = image_id
        self.write_repositories()
        return image_id

    def write_repositories(self) -> None:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        doc = {"Repositories": self.repos}
        (self.images_dir / "repositories.json").write_text(json.dumps(doc))

    def diff_dir(self, chain: str) -> Path:
        entry = self.images_dir / "layerdb" / "sha256" / chain.removeprefix("sha256:")
        return self.root / "overlay2" / (entry / "cache-id").read_text() / "diff"


def _repo(ref: str) -> str:
    """The repository part of a reference: without its tag and digest."""
    name = ref.split("@")[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name

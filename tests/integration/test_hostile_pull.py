"""Every hostile layer of the corpus, pulled through a real podlingd from a real registry.

Each must fail with a clear error (or, for the cases that are merely unusual, succeed),
with nothing written outside the snapshots, no image listed after a failure, and no
snapshot or partial download left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zstandard
from cri_api.v1 import api_pb2 as pb

from tests.integration.conftest import registry_config
from tests.support.daemon import Daemon
from tests.support.images import busybox_rootfs_layer, canonical_json, push_blob, push_manifest
from tests.support.registry import RegistryServer
from tests.support.tars import HOSTILE, Hostile, make_box, tree_state

pytestmark = pytest.mark.root

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
PLAIN = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Iterator[Daemon]:
    # a 10 MiB layer limit makes the corpus' 50 MB decompression bomb trip it
    cfg = registry_config(registry.host).replace(
        "[images]\n", "[images]\nmax_layer_size = 10485760\n"
    )
    with Daemon(tmp_path_factory.mktemp("hostile-daemon"), cfg) as d:
        yield d


def _diff_id(blob: bytes, media_type: str) -> str:
    """The uncompressed digest, where the blob can be decompressed at all."""
    try:
        if media_type.endswith("gzip"):
            blob = gzip.decompress(blob)
        elif media_type.endswith("zstd"):
            blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        pass
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _push(reg: RegistryServer, repo: str, layers: list[tuple[bytes, str]]) -> str:
    descs, diff_ids = [], []
    for blob, media_type in layers:
        digest = push_blob(reg.url, repo, blob)
        descs.append({"mediaType": media_type, "digest": digest, "size": len(blob)})
        diff_ids.append(_diff_id(blob, media_type))
    config = canonical_json(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    )
    cfg_digest = push_blob(reg.url, repo, config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(config)},
            "layers": descs,
        }
    )
    push_manifest(reg.url, repo, "v1", manifest, OCI_MANIFEST)
    return f"{reg.host}/{repo}:v1"


def _snapshot_dirs(d: Daemon) -> list[str]:
    return sorted(p.name for p in (d.root / "snapshots").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_layer_pull(
    case: Hostile, daemon: Daemon, registry: RegistryServer, tmp_path: Path
) -> None:
    box = tmp_path / "box"
    make_box(box)
    layers = [(busybox_rootfs_layer(), PLAIN)]
    if case.lower is not None:
        layers.append((case.lower(box), PLAIN))
    layers.append((case.build(box), case.media_type))
    ref = _push(registry, f"hostile/{case.name.lower()}", layers)
    before = tree_state(box, skip=box / "dest")
    passwd = os.stat("/etc/passwd")
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    if case.expect is None:
        daemon.images.PullImage(request)
        daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    else:
        with pytest.raises(grpc.RpcError) as e:
            daemon.images.PullImage(request)
        assert e.value.code() in (
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.DATA_LOSS,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), e.value.details()
        assert e.value.details()
    assert tree_state(box, skip=box / "dest") == before, "something outside the snapshots changed"
    assert os.stat("/etc/passwd") == passwd
    assert list(daemon.images.ListImages(pb.ListImagesRequest()).images) == []
    assert _snapshot_dirs(daemon) == [], "a failed or removed image left snapshots"
    assert list((daemon.root / "content" / "ingest").iterdir()) == []

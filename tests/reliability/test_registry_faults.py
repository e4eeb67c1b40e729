"""Registry faults through a real podlingd: each pull fails with a clear error, leaves no
partial content visible, and a later pull succeeds.

podling has no retry setting of its own: a pull that meets a fault fails at once with a
code the kubelet's back-off understands (UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED,
DEADLINE_EXCEEDED); what a failed pull downloaded correctly stays (verified blobs, or a
partial in the ingest area that the next pull resumes with a Range request).

Covered elsewhere, not repeated here:
- a blob whose bytes at rest do not match its digest: tests/integration/test_images.py
  test_corrupted_blob_fails_and_leaves_nothing (and test_registry_client.py
  test_corrupted_blob_is_data_loss)
- a stalled transfer, DEADLINE_EXCEEDED then a resumed pull:
  test_images.py test_stalled_pull_fails_then_resumes (client level:
  test_registry_client.py test_stall_times_out_and_keeps_partial)
- a dropped connection resumed with Range at the client level, a server ignoring Range:
  test_registry_client.py test_resume_after_dropped_connection,
  test_server_ignoring_range_restarts_from_zero
- wrong credentials at a Basic or Bearer registry: test_images.py test_basic_auth,
  test_bearer_token_registry
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.conftest import registry_config
from tests.support.daemon import Daemon
from tests.support.faultproxy import FaultProxy, RefusingTokenServer
from tests.support.images import BuiltImage, build_image, busybox_rootfs_layer, layer, push_image
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root

BIG = 1 << 20  # the second layer: random, so its gzip blob stays ~1 MiB


@pytest.fixture(scope="module")
def image(registry: RegistryServer) -> BuiltImage:
    img = build_image([busybox_rootfs_layer(), layer({"big": os.urandom(BIG)})], "gzip")
    push_image(registry.url, "rel-fault-reg/app", "v1", img)
    return img


@pytest.fixture
def front(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as proxy:
        yield proxy


def pull(d: Daemon, ref: str) -> str:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    return str(d.images.PullImage(req).image_ref)


def failed_pull(d: Daemon, ref: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        pull(d, ref)
    return e.value.code(), e.value.details() or ""


def assert_nothing_visible(d: Daemon, img: BuiltImage) -> None:
    """After a failed pull: no image listed, no snapshot left, and every blob under its
    final name is complete and verified (a partial lives only in the ingest area)."""
    assert list(d.images.ListImages(pb.ListImagesRequest()).images) == []
    snapshots = [p.name for p in (d.root / "snapshots").iterdir() if p.name.isdigit()]
    assert snapshots == [], "a failed pull left snapshots"
    for blob in (d.root / "content" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    status = d.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=img.config_digest))
    )
    assert not status.HasField("image")


def daemon_for(make_daemon: Callable[[str], Daemon], host: str) -> Daemon:
    return make_daemon(registry_config(host))


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("what", ["manifests", "blobs"])
def test_5xx_fails_unavailable_then_pull_succeeds(
    status: int,
    what: str,
    image: BuiltImage,
    front: FaultProxy,
    make_daemon: Callable[[str], Daemon],
) -> None:
    d = daemon_for(make_daemon, front.host)
    ref = f"{front.host}/rel-fault-reg/app:v1"
    match = "/manifests/" if what == "manifests" else f"/blobs/{image.layers[1].digest}"
    front.inject(match, "status", status=status)
    code, msg = failed_pull(d, ref)
    assert front.injected, "the fault was never served"
    assert code == grpc.StatusCode.UNAVAILABLE, msg
    assert f"HTTP {status}" in msg, msg
    assert (image.layers[1].digest if what == "blobs" else "rel-fault-reg/app") in msg
    assert_nothing_visible(d, image)
    assert pull(d, ref) == image.config_digest


def test_reset_mid_blob_keeps_only_a_partial_and_resumes(
    image: BuiltImage, front: FaultProxy, make_daemon: Callable[[str], Daemon]
) -> None:
    d = daemon_for(make_daemon, front.host)
    ref = f"{front.host}/rel-fault-reg/app:v1"
    target = image.layers[1]
    front.inject(f"/blobs/{target.digest}", "reset", after=256 << 10)
    code, msg = failed_pull(d, ref)
    assert code == grpc.StatusCode.UNAVAILABLE, msg
    assert target.digest in msg and "resumes" in msg, msg
    assert_nothing_visible(d, image)
    partial = d.root / "content" / "ingest" / target.digest[7:]
    kept = partial.stat().st_size
    assert 0 < kept < target.size, "the bytes received before the reset are kept"
    assert pull(d, ref) == image.config_digest
    assert f"GET /v2/rel-fault-reg/app/blobs/{target.digest} bytes={kept}-" in front.requests
    assert not partial.exists()


def test_wrong_bytes_in_transit_are_data_loss_and_not_kept(
    image: BuiltImage, front: FaultProxy, make_daemon: Callable[[str], Daemon]
) -> None:
    d = daemon_for(make_daemon, front.host)
    ref = f"{front.host}/rel-fault-reg/app:v1"
    target = image.layers[1]
    front.inject(f"/blobs/{target.digest}", "flip")
    code, msg = failed_pull(d, ref)
    assert code == grpc.StatusCode.DATA_LOSS, msg
    assert target.digest in msg, msg
    assert_nothing_visible(d, image)
    assert not (d.root / "content" / "blobs" / "sha256" / target.digest[7:]).exists()
    assert not (d.root / "content" / "ingest" / target.digest[7:]).exists()
    assert pull(d, ref) == image.config_digest


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.UNAUTHENTICATED),
        (500, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_token_server_refusing(
    status: int,
    code: grpc.StatusCode,
    image: BuiltImage,
    registry: RegistryServer,
    make_daemon: Callable[[str], Daemon],
) -> None:
    with RefusingTokenServer(registry.url) as tokens:
        d = daemon_for(make_daemon, tokens.host)
        ref = f"{tokens.host}/rel-fault-reg/app:v1"
        tokens.refuse_status = status
        got, msg = failed_pull(d, ref)
        assert tokens.token_requests >= 1
        assert got == code, msg
        assert "token service" in msg and tokens.realm in msg, msg
        assert f"HTTP {status}" in msg, msg
        assert_nothing_visible(d, image)
        assert not list((d.root / "content" / "blobs" / "sha256").iterdir())
        tokens.refuse_status = None
        assert pull(d, ref) == image.config_digest


def test_registry_gone_then_back(
    tmp_path: Path, image: BuiltImage, make_daemon: Callable[[str], Daemon]
) -> None:
    """The registry process is down (connection refused), then starts again."""
    reg = RegistryServer(tmp_path / "flaky")
    d = daemon_for(make_daemon, reg.host)
    ref = f"{reg.host}/rel-fault-reg/gone:v1"
    code, msg = failed_pull(d, ref)
    assert code == grpc.StatusCode.UNAVAILABLE, msg
    assert "cannot connect" in msg and reg.host in msg, msg
    assert_nothing_visible(d, image)
    with reg:
        push_image(reg.url, "rel-fault-reg/gone", "v1", image)
        assert pull(d, ref) == image.config_digest

"""A full disk under the daemon's root (a small tmpfs mounted by the test): pulls and
container creation fail with RESOURCE_EXHAUSTED naming the full filesystem and what to
do, leave no corrupt or half-visible state, and work again once space returns.

The root holds the metadata database, the content store and the snapshots, so a full
root is what a node with a full image filesystem sees. The state dir stays elsewhere.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling.oslib import cgroups
from tests.integration.conftest import registry_config
from tests.integration.pod_fixtures import make_cgroup_parent
from tests.support.daemon import Daemon
from tests.support.images import BuiltImage, build_image, busybox_rootfs_layer, layer, push_image
from tests.support.pods import (
    container_config,
    load_busybox,
    pod_config,
    pod_daemon_config,
    remove_all,
    start_container,
    wait_state,
)
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root

BRIDGE, SUBNET = "plfault1", "10.93.14.0/24"
CGROUP_PARENT = f"podling-{BRIDGE}"
TMPFS_SIZE = 64 << 20
TMPFS_INODES = 8192


@pytest.fixture
def node(tmp_path: Path, registry: RegistryServer) -> Iterator[Daemon]:
    """A daemon whose root is a small tmpfs of its own; pods run on the host network."""
    base = tmp_path / "node"
    root = base / "root"
    root.mkdir(parents=True)
    opts = f"size={TMPFS_SIZE},nr_inodes={TMPFS_INODES},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "plfault-tmpfs", str(root)], check=True)
    make_cgroup_parent(CGROUP_PARENT)
    extra = registry_config(registry.host)
    d = Daemon(base, pod_daemon_config(base, BRIDGE, SUBNET, extra, CGROUP_PARENT))
    try:
        d.start()
        yield d
    finally:
        free_space(root / "filler")  # a failed test may leave the disk full
        try:
            if d.channel is not None:
                remove_all(d)
        finally:
            d.stop()
            subprocess.run(["umount", "-l", str(root)], check=False)
            cgroups.remove(CGROUP_PARENT)


def fill(root: Path, leave: int = 0, inodes: bool = False, blocks: bool = True) -> Path:
    """Take all but `leave` bytes of `root`'s filesystem (unless not `blocks`) and, with
    `inodes`, every inode, with filler under root/filler; remove it to give space back."""
    filler = root / "filler"
    filler.mkdir()
    free = os.statvfs(root)
    size = free.f_bavail * free.f_frsize - leave if blocks else 0
    fd = os.open(filler / "blocks", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if size > 0:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    n = 0
    while inodes:
        try:
            (filler / f"i{n}").touch()
        except OSError as e:
            assert e.errno == errno.ENOSPC
            break
        n += 1
    return filler


def free_space(filler: Path) -> None:
    subprocess.run(["rm", "-rf", str(filler)], check=True)


def code_of(fn: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()  # type: ignore[operator]
    return e.value.code(), e.value.details() or ""


def pull(d: Daemon, ref: str) -> str:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    return str(d.images.PullImage(req).image_ref)


def snapshot_rows(d: Daemon) -> list[tuple[int, str, str]]:
    """(id, key, kind) of every snapshot, from the snapshotter's database."""
    db = sqlite3.connect(f"file:{d.root / 'snapshots' / 'metadata.db'}?mode=ro", uri=True)
    try:
        return [
            (int(i), str(k), str(kind))
            for i, k, kind in db.execute("SELECT id, key, kind FROM snapshots ORDER BY id")
        ]
    finally:
        db.close()


def assert_no_partial_image(d: Daemon) -> None:
    """No image listed; what snapshots a full disk kept from being collected are whole
    committed layers (reused by the next pull, swept at start), each with its dir; and
    every blob under its final name is verified."""
    assert list(d.images.ListImages(pb.ListImagesRequest()).images) == []
    rows = snapshot_rows(d)
    assert all(kind == "committed" and key.startswith("sha256:") for _, key, kind in rows), rows
    dirs = sorted(int(p.name) for p in (d.root / "snapshots").iterdir() if p.name.isdigit())
    assert dirs == [i for i, _, _ in rows]
    for blob in (d.root / "content" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob


def assert_names_the_full_disk(msg: str, d: Daemon) -> None:
    assert str(d.root) in msg, msg
    assert "space" in msg and "free" in msg, msg


def push(registry: RegistryServer, repo: str, img: BuiltImage) -> str:
    push_image(registry.url, repo, "v1", img)
    return f"{registry.host}/{repo}:v1"


def test_blob_download_on_full_disk(node: Daemon, registry: RegistryServer) -> None:
    img = build_image([layer({"big": os.urandom(4 << 20)})], "gzip")
    ref = push(registry, "rel-fault-disk/download", img)
    filler = fill(node.root, leave=1 << 20)
    code, msg = code_of(lambda: pull(node, ref))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
    assert_names_the_full_disk(msg, node)
    assert f"storing blob {img.layers[0].digest}" in msg, msg
    assert_no_partial_image(node)
    free_space(filler)
    assert pull(node, ref) == img.config_digest


def test_unpack_on_full_disk(node: Daemon, registry: RegistryServer) -> None:
    """The blobs fit (zeros compress well), their extraction does not."""
    img = build_image([busybox_rootfs_layer(), layer({"zeros": bytes(8 << 20)})], "gzip")
    ref = push(registry, "rel-fault-disk/unpack", img)
    filler = fill(node.root, leave=4 << 20)
    code, msg = code_of(lambda: pull(node, ref))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
    assert_names_the_full_disk(msg, node)
    assert_no_partial_image(node)
    free_space(filler)
    assert pull(node, ref) == img.config_digest


@pytest.mark.parametrize(
    ("what", "blocks", "where"),
    [
        ("no blocks, no inodes", True, "metadata database"),
        ("no inodes: the writable layer cannot be made", False, "creating snapshot 'ct-"),
    ],
)
def test_create_container_on_full_disk(
    what: str, blocks: bool, where: str, node: Daemon, tmp_path: Path
) -> None:
    load_busybox(node, tmp_path)
    cfg = pod_config(log_dir=tmp_path / "logs")
    cfg.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    pod_id = node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    snapshots_before = sorted(p.name for p in (node.root / "snapshots").iterdir())
    filler = fill(node.root, inodes=True, blocks=blocks)
    ctr = container_config("full", "sh", "-c", "echo ok; sleep 30")
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=cfg)
    code, msg = code_of(lambda: node.runtime.CreateContainer(req))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
    assert_names_the_full_disk(msg, node)
    assert where in msg, (what, msg)
    listed = node.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert list(listed) == []
    assert sorted(p.name for p in (node.root / "snapshots").iterdir()) == snapshots_before
    assert list((node.state / "containers").iterdir()) == []
    free_space(filler)
    cid = start_container(node, pod_id, cfg, ctr)
    assert wait_state(node, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING

"""The CRI ImageService end to end: a real podlingd pulling from a real docker-registry."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.conftest import push, registry_config, whiteout_image
from tests.support.daemon import Daemon
from tests.support.images import (
    build_image,
    busybox_rootfs_layer,
    layer,
    push_image,
    push_index,
    two_platform_images,
)
from tests.support.registry import RegistryServer
from tests.support.tokenserver import StallingProxy, TokenServer

pytestmark = pytest.mark.root


def spec(image: str) -> pb.ImageSpec:
    return pb.ImageSpec(image=image)


def pull(d: Daemon, image: str, auth: pb.AuthConfig | None = None) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=spec(image), auth=auth)).image_ref)


def status(d: Daemon, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return d.images.ImageStatus(pb.ImageStatusRequest(image=spec(image), verbose=verbose))


def listed(d: Daemon) -> list[pb.Image]:
    return list(d.images.ListImages(pb.ListImagesRequest()).images)


def code_of(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details() or ""


def blob_files(d: Daemon) -> list[Path]:
    return list((d.root / "content" / "blobs" / "sha256").iterdir())


def test_pull_list_status_remove(daemon: Daemon, registry: RegistryServer) -> None:
    img = whiteout_image()
    ref = push(registry, "team/app", "v1", img)
    image_id = pull(daemon, ref)
    assert image_id == img.config_digest  # the image id is the config digest
    [only] = listed(daemon)
    assert only.id == image_id
    assert list(only.repo_tags) == [ref]
    assert list(only.repo_digests) == [f"{registry.host}/team/app@{img.manifest_digest}"]
    assert only.size == img.config.size + sum(b.size for b in img.layers)
    assert only.uid.value == 1000 and only.username == ""
    # found by tag, id, id without prefix, short id, and digest; all the same image
    for name in (ref, image_id, image_id[7:], image_id[7:19], only.repo_digests[0]):
        st = status(daemon, name)
        assert st.image.id == image_id, name
    verbose = status(daemon, ref, verbose=True)
    info = json.loads(verbose.info["info"])
    assert info["imageSpec"]["config"]["Cmd"] == ["sh"]
    assert len(info["chainIDs"]) == 3
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(ref)))
    assert listed(daemon) == []
    assert not status(daemon, image_id).HasField("image")
    assert not status(daemon, only.repo_digests[0]).HasField("image")
    assert blob_files(daemon) == []  # nothing else used them


def test_unknown_image_status_is_empty_and_remove_succeeds(daemon: Daemon) -> None:
    assert not status(daemon, "127.0.0.1:1/nothing:here").HasField("image")
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec("nothing:here")))
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec("sha256:" + "a" * 64)))


@pytest.mark.parametrize(
    ("compression", "media"),
    [("zstd", "oci"), ("none", "oci"), ("gzip", "docker"), (["gzip", "zstd", "none"], "oci")],
)
def test_layer_formats(
    daemon: Daemon, registry: RegistryServer, compression: str | list[str], media: str
) -> None:
    layers = [busybox_rootfs_layer(), layer({"a": b"1"}), layer({"b": b"2"})]
    n = len(compression) if isinstance(compression, list) else 3
    img = build_image(layers[:n], compression, {"Cmd": ["sh"]}, media=media)
    ref = push(registry, f"fmt/{media}", str(abs(hash(str(compression))) % 10000), img)
    assert pull(daemon, ref) == img.config_digest
    assert [i.id for i in listed(daemon)] == [img.config_digest]


def test_index_picks_host_platform(daemon: Daemon, registry: RegistryServer) -> None:
    images = two_platform_images()
    index = push_index(registry.url, "multi/app", "v1", images)
    image_id = pull(daemon, f"{registry.host}/multi/app:v1")
    assert image_id == images["linux/amd64"].config_digest
    [img] = listed(daemon)
    # the repo digest is the index's: `name@digest` must resolve to what was pulled
    assert list(img.repo_digests) == [f"{registry.host}/multi/app@{index.digest}"]


def test_same_image_under_two_names_is_one_image(daemon: Daemon, registry: RegistryServer) -> None:
    img = build_image([busybox_rootfs_layer()], "gzip", {"Cmd": ["sh"]})
    a = push(registry, "names/a", "1", img)
    b = push(registry, "names/b", "2", img)
    assert pull(daemon, a) == pull(daemon, b)
    [one] = listed(daemon)
    assert sorted(one.repo_tags) == sorted([a, b])
    assert len(one.repo_digests) == 2
    # removing by one name removes the image with all its names (the kubelet expects this)
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(a)))
    assert listed(daemon) == [] and not status(daemon, b).HasField("image")


def test_shared_layers_survive_removal_of_one_image(
    daemon: Daemon, registry: RegistryServer
) -> None:
    base = busybox_rootfs_layer()
    one = build_image([base, layer({"one": b"1"})], "gzip")
    two = build_image([base, layer({"two": b"2"})], "gzip")
    r1, r2 = push(registry, "share/one", "v", one), push(registry, "share/two", "v", two)
    pull(daemon, r1)
    pull(daemon, r2)
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(r1)))
    remaining = {p.name for p in blob_files(daemon)}
    assert one.layers[0].digest[7:] in remaining  # the shared base layer's blob stays
    assert one.layers[1].digest[7:] not in remaining
    # and the remaining image still pulls instantly from what is there (no re-download)
    assert pull(daemon, r2) == two.config_digest


def test_concurrent_removals_both_succeed(daemon: Daemon, registry: RegistryServer) -> None:
    img = build_image([busybox_rootfs_layer(), layer({"x": b"x"})], "gzip")
    ref = push(registry, "race/rm", "v", img)
    pull(daemon, ref)
    errors: list[BaseException] = []

    def remove() -> None:
        try:
            daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(ref)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=remove) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and listed(daemon) == []


def test_concurrent_pulls_share_one_download(
    tmp_path: Path, registry: RegistryServer, make_daemon: Callable[[str], Daemon]
) -> None:
    img = build_image([busybox_rootfs_layer(), layer({"y": b"y" * 100000})], "gzip")
    push_image(registry.url, "single/flight", "v", img)
    with TokenServer(registry.url) as front:
        d = make_daemon(registry_config(front.host))
        ref = f"{front.host}/single/flight:v"
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(pull(d, ref))) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [img.config_digest] * 5
        blob_gets = [r for r in front.requests if r.startswith("GET") and "/blobs/" in r]
        for b in img.layers:
            assert sum(b.digest in r for r in blob_gets) == 1, blob_gets


def test_basic_auth(tmp_path: Path, make_daemon: Callable[[str], Daemon]) -> None:
    with RegistryServer(tmp_path / "authreg", users={"alice": "s3cret"}) as reg:
        img = build_image([busybox_rootfs_layer()], "gzip")
        push_image(reg.url, "private/app", "v1", img, auth=("alice", "s3cret"))
        d = make_daemon(registry_config(reg.host))
        ref = f"{reg.host}/private/app:v1"
        code, msg = code_of(lambda: pull(d, ref))
        assert code == grpc.StatusCode.UNAUTHENTICATED, msg
        bad = pb.AuthConfig(username="alice", password="wrong")
        assert code_of(lambda: pull(d, ref, bad))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert listed(d) == []
        good = pb.AuthConfig(username="alice", password="s3cret")
        assert pull(d, ref, good) == img.config_digest
        d.images.RemoveImage(pb.RemoveImageRequest(image=spec(ref)))
        # the `auth` field form: base64("user:password")
        assert pull(d, ref, pb.AuthConfig(auth="YWxpY2U6czNjcmV0")) == img.config_digest
        code, msg = code_of(lambda: pull(d, ref, pb.AuthConfig(auth="%%%")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "base64" in msg


def test_bearer_token_registry(
    registry: RegistryServer, make_daemon: Callable[[str], Daemon]
) -> None:
    img = build_image([busybox_rootfs_layer(), layer({"t": b"t"})], "gzip")
    push_image(registry.url, "bearer/app", "v1", img)
    with TokenServer(registry.url, users={"bob": "pw"}) as front:
        d = make_daemon(registry_config(front.host))
        ref = f"{front.host}/bearer/app:v1"
        assert code_of(lambda: pull(d, ref))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert pull(d, ref, pb.AuthConfig(username="bob", password="pw")) == img.config_digest
        scopes = {q.get("scope") for q in front.token_query}
        assert scopes == {"repository:bearer/app:pull"}


def test_mirror_for_docker_hub(
    registry: RegistryServer, make_daemon: Callable[[str], Daemon]
) -> None:
    img = build_image([busybox_rootfs_layer()], "gzip", {"Cmd": ["sh"]})
    push_image(registry.url, "library/busybox", "latest", img)
    # skip_upstream: the tests never talk to anything but 127.0.0.1
    cfg = f'[images.registries."docker.io"]\nmirrors = ["{registry.url}"]\nskip_upstream = true\n'
    d = make_daemon(cfg)
    assert pull(d, "busybox") == img.config_digest
    [one] = listed(d)
    assert list(one.repo_tags) == ["docker.io/library/busybox:latest"]
    assert status(d, "busybox:latest").image.id == img.config_digest
    assert status(d, "docker.io/library/busybox").image.id == img.config_digest


@pytest.mark.parametrize(
    ("image", "code", "fragment"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT, "must not be empty"),
        ("library/BusyBox", grpc.StatusCode.INVALID_ARGUMENT, "lowercase"),
        ("a" * 64, grpc.StatusCode.INVALID_ARGUMENT, "image id"),
        ("bad::tag", grpc.StatusCode.INVALID_ARGUMENT, ""),
    ],
)
def test_bad_references(daemon: Daemon, image: str, code: grpc.StatusCode, fragment: str) -> None:
    got, msg = code_of(lambda: pull(daemon, image))
    assert got == code, msg
    assert fragment in msg
    assert listed(daemon) == []


def test_not_found(daemon: Daemon, registry: RegistryServer) -> None:
    code, msg = code_of(lambda: pull(daemon, f"{registry.host}/no/such:image"))
    assert code == grpc.StatusCode.NOT_FOUND, msg
    assert "no/such" in msg


def test_corrupted_blob_fails_and_leaves_nothing(
    tmp_path: Path, make_daemon: Callable[[str], Daemon]
) -> None:
    with RegistryServer(tmp_path / "corrupt") as reg:
        img = build_image([busybox_rootfs_layer(), layer({"c": b"c" * 5000})], "gzip")
        push_image(reg.url, "bad/blob", "v", img)
        path = reg.blob_data_path(img.layers[1].digest)
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
        d = make_daemon(registry_config(reg.host))
        code, msg = code_of(lambda: pull(d, f"{reg.host}/bad/blob:v"))
        assert code == grpc.StatusCode.DATA_LOSS, msg
        assert img.layers[1].digest in msg
        assert listed(d) == []
        assert img.layers[1].digest[7:] not in {p.name for p in blob_files(d)}
        assert list((d.root / "content" / "ingest").iterdir()) == []


def test_hostile_layer_fails_cleanly(
    tmp_path: Path, registry: RegistryServer, make_daemon: Callable[[str], Daemon]
) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("../../../../../../tmp/podling-escape")
        ti.size = 4
        tar.addfile(ti, io.BytesIO(b"evil"))
    img = build_image([busybox_rootfs_layer(), buf.getvalue()], "gzip")
    ref = push(registry, "hostile/escape", "v", img)
    d = make_daemon(registry_config(registry.host))
    code, msg = code_of(lambda: pull(d, ref))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
    assert not Path("/tmp/podling-escape").exists()
    assert listed(d) == []


def test_imagefsinfo_counts_pulled_images(daemon: Daemon, registry: RegistryServer) -> None:
    before = daemon.images.ImageFsInfo(pb.ImageFsInfoRequest())
    img = build_image([busybox_rootfs_layer()], "gzip")
    pull(daemon, push(registry, "fs/info", "v", img))
    after = daemon.images.ImageFsInfo(pb.ImageFsInfoRequest())
    [fs] = after.image_filesystems
    assert fs.fs_id.mountpoint == str(daemon.root)
    grown = fs.used_bytes.value - before.image_filesystems[0].used_bytes.value
    assert grown >= len(busybox_rootfs_layer()) // 2  # the unpacked busybox, at least
    assert fs.inodes_used.value > before.image_filesystems[0].inodes_used.value
    assert len(after.container_filesystems) == 1


def test_images_survive_a_restart(tmp_path: Path, registry: RegistryServer) -> None:
    img = build_image([busybox_rootfs_layer()], "gzip")
    ref = push(registry, "persist/app", "v", img)
    with Daemon(tmp_path, registry_config(registry.host)) as d:
        pull(d, ref)
    with Daemon(tmp_path, registry_config(registry.host)) as d:
        assert status(d, ref).image.id == img.config_digest


def test_stalled_pull_fails_then_resumes(
    registry: RegistryServer, make_daemon: Callable[[str], Daemon]
) -> None:
    big = os.urandom(4 << 20)  # random: the gzip blob stays ~4 MiB
    img = build_image([busybox_rootfs_layer(), layer({"big": big})], "gzip")
    push_image(registry.url, "stall/app", "v1", img)
    target = img.layers[1]
    with StallingProxy(registry.url, target.digest) as front:
        cfg = registry_config(front.host).replace(
            "pull_stall_timeout = 5", "pull_stall_timeout = 1"
        )
        d = make_daemon(cfg)
        ref = f"{front.host}/stall/app:v1"
        start = time.monotonic()
        code, msg = code_of(lambda: pull(d, ref))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, msg
        assert time.monotonic() - start < 15  # no hang: the stall timeout ended it
        assert listed(d) == []
        partial = d.root / "content" / "ingest" / target.digest[7:]
        kept = partial.stat().st_size
        assert 0 < kept < target.size  # the verified half stays for the next try
        assert pull(d, ref) == img.config_digest
        assert f"bytes={kept}-" in front.ranges  # the retry asked only for the rest


def test_configured_pinned_images_are_reported_pinned(
    registry: RegistryServer, make_daemon: Callable[[str], Daemon]
) -> None:
    img = build_image([busybox_rootfs_layer(), layer({"p": b"p"})], "gzip")
    ref = push(registry, "pin/sandbox", "v1", img)
    other = push(registry, "pin/other", "v1", build_image([busybox_rootfs_layer()], "gzip"))
    cfg = registry_config(registry.host).replace("[images]\n", f'[images]\npinned = ["{ref}"]\n')
    d = make_daemon(cfg)
    pull(d, ref)
    pull(d, other)
    assert status(d, ref).image.pinned is True
    assert status(d, other).image.pinned is False
    assert {i.id: i.pinned for i in listed(d)}[img.config_digest] is True


def test_removed_image_layers_go_once_the_last_container_is_removed(tmp_path: Path) -> None:
    """RemoveImage under a container's writable layer keeps the chain the layer builds on;
    removing the container then frees it (the sweep after container removal)."""
    from tests.integration.pod_fixtures import PodEnv
    from tests.support.pods import BUSYBOX, container_config, pod_config, run_pod, start_container

    with PodEnv(tmp_path, "plsweep0", "10.93.8.0/24") as e:
        d = e.daemon
        cfg = pod_config()
        cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
        pod_id = run_pod(d, cfg)
        cid = start_container(d, pod_id, cfg, container_config("c", "sleep", "1000"))
        d.images.RemoveImage(pb.RemoveImageRequest(image=spec(BUSYBOX)))
        assert listed(d) == []
        snapshots = d.root / "snapshots"
        layer_dirs = lambda: [p for p in snapshots.iterdir() if p.name.isdigit()]  # noqa: E731
        assert len(layer_dirs()) == 2  # the image's layer, kept under the container's
        d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        assert layer_dirs() == []

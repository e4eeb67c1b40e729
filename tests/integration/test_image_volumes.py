"""Image volumes (CRI Mount.image) on a real podlingd: an image's root filesystem mounted
read-only into a container, and everything undone on removal or a failed create."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.images import Dir, Symlink, Whiteout, build_image, layer, write_oci_archive
from tests.support.pods import container_config, pod_config, run_pod, start_container, status

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plivol0", "10.93.7.0/24"
DATA = "localhost/test/ivdata:1"  # two layers: mounted as an overlay view
ONE = "localhost/test/ivone:1"  # one layer: mounted as a read-only bind


def load(d: Daemon, tmp: Path, name: str, layers: list[bytes]) -> None:
    archive = write_oci_archive(build_image(layers, "gzip", {}), name, tmp / "iv.tar")
    call = d.channel.unary_unary(  # type: ignore[union-attr]
        "/podling.v1.Admin/LoadImage",
        request_serializer=lambda x: json.dumps(x).encode(),
        response_deserializer=json.loads,
    )
    call({"path": str(archive)})
    archive.unlink()


@pytest.fixture(scope="module")
def images(env: PodEnv) -> None:
    first = layer(
        {
            "data": Dir(),
            "data/hello.txt": b"hello from the image\n",
            "data/gone.txt": b"whited out by the second layer\n",
        }
    )
    second = layer({"data/gone.txt": Whiteout(), "data/second.txt": b"second layer\n"})
    load(env.daemon, env.base, DATA, [first, second])
    one = layer(
        {
            "sub": Dir(),
            "sub/inner.txt": b"inner\n",
            "escape": Symlink("/etc"),
        }
    )
    load(env.daemon, env.base, ONE, [one])


def image_mount(path: str, image: str, **kw: object) -> pb.Mount:
    return pb.Mount(container_path=path, image=pb.ImageSpec(image=image), **kw)  # type: ignore[arg-type]


def exec_(d: Daemon, cid: str, *cmd: str) -> pb.ExecSyncResponse:
    return d.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10))


def view_snapshots(d: Daemon) -> list[str]:
    db = d.root / "snapshots" / "metadata.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT key FROM snapshots WHERE key LIKE 'iv-%'").fetchall()
    return sorted(r[0] for r in rows)


def mounted(path: str) -> bool:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == path for line in lines)


def new_pod(e: PodEnv) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_dir=e.logs)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    return run_pod(e.daemon, cfg), cfg


def test_image_volumes_are_readonly_and_removed_with_the_container(
    clean: PodEnv, images: None
) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cfg = container_config("iv", "sleep", "1000")
    cfg.mounts.extend(
        [
            image_mount("/vol", DATA, readonly=False),  # image volumes are read-only anyway
            image_mount("/one", ONE, image_sub_path="sub"),
        ]
    )
    cid = start_container(d, pod_id, pcfg, cfg)
    out = exec_(d, cid, "cat", "/vol/data/hello.txt", "/vol/data/second.txt", "/one/inner.txt")
    assert out.exit_code == 0 and out.stdout == b"hello from the image\nsecond layer\ninner\n"
    assert exec_(d, cid, "ls", "/vol/data").stdout.split() == [b"hello.txt", b"second.txt"]
    for path in ("/vol/new", "/vol/data/hello.txt", "/one/new"):
        w = exec_(d, cid, "touch", path)
        assert w.exit_code != 0 and b"Read-only file system" in w.stderr, (path, w)
    assert exec_(d, cid, "touch", "/tmp/rootfs-still-writable").exit_code == 0
    st = status(d, cid).status
    by_path = {m.container_path: m for m in st.mounts}
    vol, one = by_path["/vol"], by_path["/one"]
    assert vol.readonly and one.readonly and vol.image.image == DATA and one.image.image == ONE
    assert vol.host_path.endswith(f"{cid}/imagevols/0") and mounted(vol.host_path)
    assert one.host_path.endswith(f"{cid}/imagevols/1/sub")
    assert mounted(one.host_path.removesuffix("/sub"))
    assert Path(vol.host_path, "data", "hello.txt").read_bytes() == b"hello from the image\n"
    assert view_snapshots(d) == [f"iv-{cid}-0", f"iv-{cid}-1"]
    listed = d.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [c.id for c in listed] == [cid]
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert view_snapshots(d) == []
    assert not mounted(vol.host_path) and not Path(vol.host_path).exists()


def expect_error(
    d: Daemon, pod_id: str, pcfg: pb.PodSandboxConfig, mount: pb.Mount
) -> grpc.RpcError:
    cfg = container_config("bad", "sleep", "1000")
    cfg.mounts.append(pb.Mount(container_path="/data", host_path="/tmp"))
    cfg.mounts.append(mount)
    with pytest.raises(grpc.RpcError) as e:
        d.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pcfg)
        )
    return e.value


def test_bad_image_volumes_are_refused_and_undone(clean: PodEnv, images: None) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    missing = expect_error(d, pod_id, pcfg, image_mount("/vol", "localhost/test/nosuch:1"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == (
        "image localhost/test/nosuch:1 for mount /vol not found: pull it first"
    )
    cases = [
        (image_mount("/vol", ONE, image_sub_path="nope"), "'nope' does not exist in the image"),
        (image_mount("/vol", ONE, image_sub_path="escape"), "'escape' leaves the image"),
        (image_mount("/vol", ONE, image_sub_path="/sub"), "must be relative to the image's root"),
        (image_mount("/vol", ONE, host_path="/tmp"), "set either host_path or image"),
    ]
    for mount, message in cases:
        err = expect_error(d, pod_id, pcfg, mount)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert message in err.details(), err.details()
        # the view was made and mounted before the refusal: all of it is undone
        assert view_snapshots(d) == []
        assert d.runtime.ListContainers(pb.ListContainersRequest()).containers == []
        assert not [
            line
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if "/imagevols/" in line
        ]

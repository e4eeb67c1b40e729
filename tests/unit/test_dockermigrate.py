"""Reading a Docker data root, rebuilding layers from tar-split, writing the OCI layout."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from podling.cli.client import main
from podling.dockermigrate.dataroot import read_images
from podling.dockermigrate.layout import write_layer, write_layout
from podling.dockermigrate.tarsplit import assemble, crc64_iso, read_entries
from podling.errors import DataLoss, FailedPrecondition, UnsafeContent
from podling.image.archive import import_archive
from podling.image.content import ContentStore
from tests.support.dockerroot import DockerRoot, make_layer, sha

BASE = make_layer(
    {
        "bin/": None,
        "bin/sh": b"#!shell\n" * 100,
        "etc/": None,
        "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
        "etc/old.conf": b"old\n",
        "usr/" + "long-directory-name/" * 8 + "file.txt": b"a path longer than 100 bytes\n",
        "bin/ash": "->sh",
        "empty": b"",
    }
)
TOP = make_layer({"etc/": None, "etc/.wh.old.conf": b"", "etc/hostname": b"podling\n"})
OTHER = make_layer({"data/": None, "data/blob": bytes(range(256)) * 50})
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def docker(tmp_path: Path) -> DockerRoot:
    root = DockerRoot(tmp_path / "docker")
    root.add_image([BASE, TOP], ["busybox:1.36", "busybox:latest", f"busybox@{DIGEST}"])
    root.add_image([OTHER], ["registry.local:5000/team/data:v1"])
    return root


def test_crc64_matches_go_iso() -> None:
    # The CRC-64/GO-ISO check value: Go's crc64.Checksum("123456789", MakeTable(ISO)).
    assert crc64_iso(b"123456789") == 0xB90956C775A41001
    assert crc64_iso(b"6789", crc64_iso(b"12345")) == 0xB90956C775A41001


def test_reads_images_with_normalised_names(docker: DockerRoot) -> None:
    images = read_images(docker.root)
    assert [i.problem for i in images] == [None, None]
    names = {i.id: i.names for i in images}
    two = next(i for i in images if len(i.layers) == 2)
    assert set(names[two.id]) == {
        "docker.io/library/busybox:1.36",
        "docker.io/library/busybox:latest",
        f"docker.io/library/busybox@{DIGEST}",
    }
    assert [layer.diff_id for layer in two.layers] == [sha(BASE), sha(TOP)]
    assert json.loads(two.config)["rootfs"]["diff_ids"] == [sha(BASE), sha(TOP)]


def test_tar_split_rebuilds_each_layer_byte_for_byte(docker: DockerRoot, tmp_path: Path) -> None:
    for image in read_images(docker.root):
        for layer in image.layers:
            out = tmp_path / "out.tar"
            with out.open("wb") as f:
                assert assemble(read_entries(layer.tar_split), layer.diff_dir, f) == layer.diff_id
            assert sha(out.read_bytes()) == layer.diff_id
    assert {sha(BASE), sha(TOP), sha(OTHER)} == {
        layer.diff_id for i in read_images(docker.root) for layer in i.layers
    }


def test_layout_imports_with_names_and_ids(docker: DockerRoot, tmp_path: Path) -> None:
    images = read_images(docker.root)
    outcomes = write_layout(images, tmp_path / "layout")
    assert [o.error for o in outcomes] == [None, None]
    store = ContentStore(tmp_path / "content")
    imported = import_archive(tmp_path / "layout", store)
    got = {img.manifest.config.digest: set(img.names) for img in imported}
    assert got == {i.id: set(i.names) for i in images}
    for img in imported:
        for layer in img.manifest.layers:  # uncompressed: blob digest = diff id
            assert store.read_bytes(layer.digest) in (BASE, TOP, OTHER)
    blobs = list((tmp_path / "layout" / "blobs" / "sha256").iterdir())
    assert not [b for b in blobs if b.name.startswith("partial-")]


def test_shared_layer_is_rebuilt_once(docker: DockerRoot, tmp_path: Path) -> None:
    docker.add_image([BASE], ["base:1"])
    outcomes = write_layout(read_images(docker.root), tmp_path / "layout")
    assert [o.error for o in outcomes] == [None] * 3
    assert sum(1 for o in outcomes for layer in o.image.layers if layer.diff_id == sha(BASE)) == 2


def test_tampered_file_refuses_the_image_naming_layer_and_file(
    docker: DockerRoot, tmp_path: Path
) -> None:
    passwd = docker.diff_dir(sha(BASE)) / "etc" / "passwd"
    passwd.write_bytes(passwd.read_bytes().replace(b"root", b"toor"))  # same size
    outcomes = write_layout(read_images(docker.root), tmp_path / "layout")
    errors = {o.image.id: o.error for o in outcomes}
    bad = [e for e in errors.values() if e is not None]
    assert len(bad) == 1
    assert sha(BASE) in bad[0] and "'etc/passwd'" in bad[0]
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert names == ["registry.local:5000/team/data:v1"]


def test_resized_file_is_data_loss_naming_it(docker: DockerRoot, tmp_path: Path) -> None:
    (docker.diff_dir(sha(OTHER)) / "data" / "blob").write_bytes(b"short")
    layer = next(i for i in read_images(docker.root) if len(i.layers) == 1).layers[0]
    (tmp_path / "l" / "blobs" / "sha256").mkdir(parents=True)
    with pytest.raises(DataLoss, match=r"data/blob.*5 bytes"):
        write_layer(layer, tmp_path / "l")
    assert list((tmp_path / "l" / "blobs" / "sha256").iterdir()) == []


def _rewrite_tar_split(path: Path, name: str) -> None:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        if doc["type"] == 1 and doc["name"] == "data/blob":
            doc["name"] = name
    path.write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in docs).encode()))


@pytest.mark.parametrize("name", ["../../../etc/passwd", "escape/passwd"])
def test_tar_split_cannot_read_outside_the_diff_dir(
    docker: DockerRoot, tmp_path: Path, name: str
) -> None:
    diff = docker.diff_dir(sha(OTHER))
    (diff / "escape").symlink_to(tmp_path)
    (tmp_path / "passwd").write_bytes(bytes(range(256)) * 50)
    layer = next(i for i in read_images(docker.root) if len(i.layers) == 1).layers[0]
    _rewrite_tar_split(layer.tar_split, name)
    with pytest.raises(UnsafeContent):
        assemble(read_entries(layer.tar_split), layer.diff_dir, None)


def test_missing_tar_split_or_layer_is_a_problem(docker: DockerRoot) -> None:
    layer = next(i for i in read_images(docker.root) if len(i.layers) == 1).layers[0]
    layer.tar_split.unlink()
    problems = [i.problem for i in read_images(docker.root) if i.problem]
    assert len(problems) == 1 and "tar-split" in problems[0] and sha(OTHER) in problems[0]


def test_corrupt_config_is_a_problem(docker: DockerRoot) -> None:
    image = next(i for i in read_images(docker.root) if len(i.layers) == 1)
    content = docker.root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    (content / image.id.removeprefix("sha256:")).write_bytes(image.config + b" ")
    problems = {i.id: i.problem for i in read_images(docker.root)}
    assert "corrupt" in str(problems[image.id])
    assert sum(p is None for p in problems.values()) == 1


def test_tar_split_with_unknown_type_is_refused(docker: DockerRoot) -> None:
    layer = next(i for i in read_images(docker.root) if len(i.layers) == 1).layers[0]
    layer.tar_split.write_bytes(gzip.compress(b'{"type": 7, "payload": null}\n'))
    with pytest.raises(Exception, match="unknown tar-split entry type"):
        list(read_entries(layer.tar_split))
    layer.tar_split.write_bytes(b"not gzip")
    with pytest.raises(Exception, match="cannot read tar-split"):
        list(read_entries(layer.tar_split))


def test_name_raw_entries_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "ts.json.gz"
    raw = base64.b64encode(b"caf\xe9").decode()
    path.write_bytes(gzip.compress(f'{{"type": 1, "name_raw": "{raw}", "size": 0}}\n'.encode()))
    assert [e.name.encode("utf-8", "surrogateescape") for e in read_entries(path)] == [b"caf\xe9"]


def test_not_an_overlay2_root(tmp_path: Path) -> None:
    (tmp_path / "image" / "btrfs").mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match="found: btrfs"):
        read_images(tmp_path)
    with pytest.raises(FailedPrecondition, match="not a Docker data root"):
        read_images(tmp_path / "image" / "btrfs")


def migrate(tmp_path: Path, *args: str) -> Result:
    """`podling migrate docker ARGS` against a socket nobody serves."""
    return CliRunner().invoke(
        main, ["-r", f"unix://{tmp_path}/none.sock", "migrate", "docker", *args]
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def test_cli_dry_run_lists_without_writing(docker: DockerRoot, tmp_path: Path) -> None:
    before = _tree(tmp_path)
    result = migrate(tmp_path, "--root", str(docker.root), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and all(line.endswith(": would import") for line in lines)
    assert any("docker.io/library/busybox:1.36" in line for line in lines)
    assert any("registry.local:5000/team/data:v1" in line for line in lines)
    assert _tree(tmp_path) == before


def test_cli_fails_when_no_image_can_be_imported(docker: DockerRoot, tmp_path: Path) -> None:
    (docker.diff_dir(sha(BASE)) / "bin" / "sh").write_bytes(b"#!SHELL\n" * 100)
    (docker.diff_dir(sha(OTHER)) / "data" / "blob").unlink()
    work = tmp_path / "work"
    work.mkdir()
    result = migrate(tmp_path, "--root", str(docker.root), "--work-dir", str(work))
    assert result.exit_code == 1
    assert result.output.count("skipped:") == 2 and "'bin/sh'" in result.output
    assert list(work.iterdir()) == []  # the staging layout is gone again

"""Importing OCI layouts (dir, tar, tar.gz) and `docker save` archives into the ContentStore."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from podling.errors import DataLoss, InvalidArgument, NotFound, UnsafeContent
from podling.image import manifest as mf
from podling.image.archive import ArchiveImage, import_archive
from podling.image.content import ContentStore
from tests.support.archives import (
    IMAGE_NAME,
    REF_NAME,
    Image,
    blob_path,
    digest_of,
    docker_save,
    docker_save_oci,
    hex_of,
    index_json,
    make_image,
    multi_platform_layout,
    oci_layout,
    platform,
    write_dir,
    write_tar,
)

HOST_ARCH = mf.host_platform()[1]
OTHER_ARCH = "s390x" if HOST_ARCH != "s390x" else "amd64"
BUSYBOX = "docker.io/library/busybox:latest"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


@pytest.fixture
def image() -> Image:
    return make_image(
        [{"bin/sh": b"#!shell", "etc/hostname": b"box\n"}, {"etc/motd": b"hello\n"}],
        arch=HOST_ARCH,
    )


def manifests_in(store: ContentStore) -> set[str]:
    """Digests of stored blobs that are image manifests."""
    found = set()
    for digest in store.digests():
        try:
            doc = json.loads(store.read_bytes(digest))
        except ValueError:
            continue
        if isinstance(doc, dict) and "layers" in doc:
            found.add(digest)
    return found


def assert_image_stored(store: ContentStore, result: ArchiveImage, image: Image) -> None:
    assert result.manifest.config.digest == image.config_digest
    assert [layer.digest for layer in result.manifest.layers] == image.layer_digests
    for digest in (result.manifest_digest, image.config_digest, *image.layer_digests):
        assert store.has(digest), digest
    assert store.read_bytes(image.config_digest) == image.config
    for digest, data in zip(image.layer_digests, image.layers, strict=True):
        assert store.read_bytes(digest) == data
    assert digest_of(store.read_bytes(result.manifest_digest)) == result.manifest_digest


def layout_at(tmp_path: Path, files: dict[str, bytes], form: str) -> Path:
    if form == "dir":
        return write_dir(files, tmp_path / "layout")
    if form == "tar":
        return write_tar(files, tmp_path / "layout.tar")
    if form == "tar.gz":
        return write_tar(files, tmp_path / "layout.tar.gz", gz=True)
    assert form == "tar-dot"  # as `tar -C layout -cf x.tar .` writes it
    return write_tar(files, tmp_path / "layout.tar", prefix="./")


FORMS = ["dir", "tar", "tar.gz", "tar-dot"]


# --- OCI layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_oci_layout_imports_named_image(
    tmp_path: Path, store: ContentStore, image: Image, form: str
) -> None:
    files = oci_layout([(image, {IMAGE_NAME: "busybox:latest", REF_NAME: "latest"})])
    (result,) = import_archive(layout_at(tmp_path, files, form), store)
    assert result.names == (BUSYBOX,)
    assert result.manifest_digest == image.manifest_digest
    assert store.read_bytes(result.manifest_digest) == image.manifest
    assert result.manifest.media_type == mf.OCI_MANIFEST
    assert_image_stored(store, result, image)


@pytest.mark.parametrize("form", ["dir", "tar.gz"])
def test_gzip_layers_are_stored_as_is(tmp_path: Path, store: ContentStore, form: str) -> None:
    image = make_image([{"a": b"1"}, {"b": b"2"}], gzip_layers=True, arch=HOST_ARCH)
    files = oci_layout([(image, {IMAGE_NAME: "quay.io/team/app:v1"})])
    (result,) = import_archive(layout_at(tmp_path, files, form), store)
    assert result.names == ("quay.io/team/app:v1",)
    assert all(layer.media_type in mf.LAYER_GZIP for layer in result.manifest.layers)
    assert_image_stored(store, result, image)


@pytest.mark.parametrize(
    ("ref_name", "expected"),
    [
        ("latest", ()),  # a bare tag names no repository
        ("busybox", ()),  # a bare word is read as a tag, per the OCI convention
        ("localhost:5000/app:v2", ("localhost:5000/app:v2",)),
        ("user/app", ("docker.io/user/app:latest",)),
        ("v1.0+build", ()),  # valid OCI ref name, not a Docker reference
        ("Not/A:Valid:Ref", ()),
    ],
)
def test_ref_name_annotation(
    tmp_path: Path, store: ContentStore, image: Image, ref_name: str, expected: tuple[str, ...]
) -> None:
    files = oci_layout([(image, {REF_NAME: ref_name})])
    (result,) = import_archive(write_dir(files, tmp_path / "l"), store)
    assert result.names == expected
    assert store.has(result.manifest_digest)


def test_containerd_name_wins_over_ref_name(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    annotations = {IMAGE_NAME: "docker.io/library/busybox:1.36", REF_NAME: "other/name:x"}
    (result,) = import_archive(write_dir(oci_layout([(image, annotations)]), tmp_path / "l"), store)
    assert result.names == ("docker.io/library/busybox:1.36",)


def test_invalid_containerd_name_is_rejected(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    files = oci_layout([(image, {IMAGE_NAME: "Bad/Name:x"})])
    with pytest.raises(InvalidArgument, match=r"io\.containerd\.image\.name.*lowercase"):
        import_archive(write_dir(files, tmp_path / "l"), store)


def test_unnamed_image_is_imported_without_names(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    (result,) = import_archive(write_dir(oci_layout([(image, {})]), tmp_path / "l"), store)
    assert result.names == ()
    assert_image_stored(store, result, image)


def test_two_tags_of_one_manifest_merge(tmp_path: Path, store: ContentStore, image: Image) -> None:
    other = make_image([{"x": b"other"}], arch=HOST_ARCH)
    files = oci_layout(
        [
            (image, {IMAGE_NAME: "busybox:latest"}),
            (other, {IMAGE_NAME: "quay.io/x/other:1"}),
            (image, {IMAGE_NAME: "busybox:1.36"}),
        ]
    )
    results = import_archive(write_dir(files, tmp_path / "l"), store)
    assert [(r.manifest_digest, r.names) for r in results] == [
        (image.manifest_digest, (BUSYBOX, "docker.io/library/busybox:1.36")),
        (other.manifest_digest, ("quay.io/x/other:1",)),
    ]
    assert manifests_in(store) == {image.manifest_digest, other.manifest_digest}


@pytest.mark.parametrize("form", ["dir", "tar.gz"])
def test_nested_index_picks_host_platform(tmp_path: Path, store: ContentStore, form: str) -> None:
    host = make_image([{"host": b"yes"}], arch=HOST_ARCH)
    other = make_image([{"other": b"no"}], arch=OTHER_ARCH)
    files, index_digest = multi_platform_layout([other, host], {IMAGE_NAME: "busybox"})
    (result,) = import_archive(layout_at(tmp_path, files, form), store)
    assert result.names == (BUSYBOX,)
    assert result.manifest_digest == host.manifest_digest
    assert_image_stored(store, result, host)
    # Only the host's image is imported; the other platform's content is not copied.
    assert not store.has(other.manifest_digest)
    assert not store.has(other.layer_digests[0])
    assert not store.has(index_digest)


def test_nested_index_needs_only_host_blobs(tmp_path: Path, store: ContentStore) -> None:
    host = make_image([{"host": b"yes"}], arch=HOST_ARCH)
    other = make_image([{"other": b"no"}], arch=OTHER_ARCH)
    files, _ = multi_platform_layout([other, host], {})
    for path in other.blobs():
        del files[path]
    (result,) = import_archive(write_dir(files, tmp_path / "l"), store)
    assert result.manifest_digest == host.manifest_digest


def test_nested_index_without_host_platform(tmp_path: Path, store: ContentStore) -> None:
    other = make_image([{"other": b"no"}], arch=OTHER_ARCH)
    files, _ = multi_platform_layout([other], {})
    with pytest.raises(NotFound, match=f"offers linux/{OTHER_ARCH}"):
        import_archive(write_dir(files, tmp_path / "l"), store)
    assert manifests_in(store) == set()


def test_flat_index_with_two_platforms_picks_host(tmp_path: Path, store: ContentStore) -> None:
    host = make_image([{"host": b"yes"}], arch=HOST_ARCH)
    other = make_image([{"other": b"no"}], arch=OTHER_ARCH)
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', **host.blobs(), **other.blobs()}
    names = {IMAGE_NAME: "busybox:latest"}
    files["index.json"] = index_json(
        [
            other.descriptor(platform=platform(other), annotations=names),
            host.descriptor(platform=platform(host), annotations=names),
        ]
    )
    (result,) = import_archive(write_dir(files, tmp_path / "l"), store)
    assert result.manifest_digest == host.manifest_digest
    assert result.names == (BUSYBOX,)
    assert manifests_in(store) == {host.manifest_digest}


def test_layout_without_oci_layout_file_is_accepted(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    files = oci_layout([(image, {})])
    del files["oci-layout"]
    (result,) = import_archive(write_dir(files, tmp_path / "l"), store)
    assert result.manifest_digest == image.manifest_digest


def test_unsupported_layout_version(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = oci_layout([(image, {})])
    files["oci-layout"] = b'{"imageLayoutVersion": "2.0.0"}'
    with pytest.raises(InvalidArgument, match=re.escape("layout version '2.0.0'")):
        import_archive(write_dir(files, tmp_path / "l"), store)


def test_reimport_is_idempotent(tmp_path: Path, store: ContentStore, image: Image) -> None:
    archive = write_tar(oci_layout([(image, {IMAGE_NAME: "busybox"})]), tmp_path / "a.tar")
    first = import_archive(archive, store)
    assert import_archive(archive, store) == first


# --- OCI failures --------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dir", "tar", "tar.gz"])
def test_corrupted_layer_is_data_loss_and_leaves_no_manifest(
    tmp_path: Path, store: ContentStore, image: Image, form: str
) -> None:
    files = oci_layout([(image, {IMAGE_NAME: "busybox"})])
    path = blob_path(image.layer_digests[1])
    files[path] = files[path][:-1] + b"X"  # same size, different content
    with pytest.raises(DataLoss, match=hex_of(image.layer_digests[1])):
        import_archive(layout_at(tmp_path, files, form), store)
    assert not store.has(image.manifest_digest)
    assert not store.has(image.layer_digests[1])
    assert manifests_in(store) == set()
    assert list((store.root / "ingest").iterdir()) == []


def test_truncated_layer_is_data_loss(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = oci_layout([(image, {})])
    path = blob_path(image.layer_digests[0])
    files[path] = files[path][:100]
    with pytest.raises(DataLoss, match="descriptor says"):
        import_archive(layout_at(tmp_path, files, "tar"), store)
    assert manifests_in(store) == set()


def test_corrupted_config_is_data_loss(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = oci_layout([(image, {})])
    path = blob_path(image.config_digest)
    files[path] = files[path].replace(b"/bin/sh", b"/bin/xx")
    with pytest.raises(DataLoss, match=hex_of(image.config_digest)):
        import_archive(write_dir(files, tmp_path / "l"), store)
    assert not store.has(image.config_digest)
    assert manifests_in(store) == set()


def test_corrupted_manifest_is_data_loss(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = oci_layout([(image, {})])
    path = blob_path(image.manifest_digest)
    files[path] = files[path].replace(b'"schemaVersion": 2', b'"schemaVersion":  2')[:-1]
    with pytest.raises(DataLoss):
        import_archive(write_dir(files, tmp_path / "l"), store)
    assert manifests_in(store) == set()


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
@pytest.mark.parametrize("form", ["dir", "tar"])
def test_missing_blob_names_the_file(
    tmp_path: Path, store: ContentStore, image: Image, which: str, form: str
) -> None:
    digest = {
        "layer": image.layer_digests[0],
        "config": image.config_digest,
        "manifest": image.manifest_digest,
    }[which]
    files = oci_layout([(image, {})])
    del files[blob_path(digest)]
    with pytest.raises(InvalidArgument, match=f"blobs/sha256/{hex_of(digest)} is missing"):
        import_archive(layout_at(tmp_path, files, form), store)
    assert manifests_in(store) == set()


def test_layer_count_must_match_diff_ids(tmp_path: Path, store: ContentStore) -> None:
    image = make_image([{"a": b"1"}, {"b": b"2"}], arch=HOST_ARCH)
    manifest = json.loads(image.manifest)
    manifest["layers"] = manifest["layers"][:1]
    image.manifest = json.dumps(manifest).encode()
    with pytest.raises(InvalidArgument, match="2 diff_ids but there are 1 layers"):
        import_archive(write_dir(oci_layout([(image, {})]), tmp_path / "l"), store)


def test_blob_symlink_leaving_the_layout_dir_is_unsafe(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    files = oci_layout([(image, {})])
    layer_path = blob_path(image.layer_digests[0])
    outside = tmp_path / "outside"
    outside.write_bytes(files.pop(layer_path))  # right content, but outside the layout
    root = write_dir(files, tmp_path / "l")
    (root / layer_path).symlink_to(outside)
    with pytest.raises(UnsafeContent, match="leaves the directory"):
        import_archive(root, store)


def test_tar_symlink_leaving_the_archive_is_unsafe(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    files = oci_layout([(image, {})])
    layer_path = blob_path(image.layer_digests[0])
    del files[layer_path]
    archive = write_tar(files, tmp_path / "a.tar", symlinks={layer_path: "../../../../etc/passwd"})
    with pytest.raises(UnsafeContent, match="outside"):
        import_archive(archive, store)


# --- docker save ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_docker_save_archive(tmp_path: Path, store: ContentStore, image: Image, gz: bool) -> None:
    files = docker_save([(image, ["busybox:latest", "localhost:5000/tools/box:v1"])])
    archive = write_tar(files, tmp_path / ("save.tar.gz" if gz else "save.tar"), gz=gz)
    (result,) = import_archive(archive, store)
    assert result.names == (BUSYBOX, "localhost:5000/tools/box:v1")
    assert result.manifest.media_type == mf.DOCKER_MANIFEST
    assert result.manifest.config.media_type == mf.DOCKER_CONFIG
    assert result.manifest.config.size == len(image.config)
    assert [layer.media_type for layer in result.manifest.layers] == [
        "application/vnd.docker.image.rootfs.diff.tar"
    ] * 2
    assert [layer.size for layer in result.manifest.layers] == [len(b) for b in image.layers]
    assert_image_stored(store, result, image)
    # The synthesised manifest is in the store and parses back to what was returned.
    stored = store.read_bytes(result.manifest_digest)
    assert json.loads(stored)["mediaType"] == mf.DOCKER_MANIFEST
    assert mf.parse(stored) == result.manifest


def test_docker_save_detects_gzip_layers(tmp_path: Path, store: ContentStore) -> None:
    image = make_image([{"a": b"1"}, {"b": b"2"}], gzip_layers=True, arch=HOST_ARCH)
    (result,) = import_archive(write_tar(docker_save([(image, None)]), tmp_path / "s.tar"), store)
    assert result.names == ()
    assert [layer.media_type for layer in result.manifest.layers] == [
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    ] * 2
    assert all(layer.media_type in mf.LAYER_GZIP for layer in result.manifest.layers)
    assert_image_stored(store, result, image)


def test_docker_save_unpacked_dir(tmp_path: Path, store: ContentStore, image: Image) -> None:
    (result,) = import_archive(write_dir(docker_save([(image, ["app:1"])]), tmp_path / "d"), store)
    assert result.names == ("docker.io/library/app:1",)
    assert_image_stored(store, result, image)


def test_docker_save_two_images_and_shared_layer_symlink(
    tmp_path: Path, store: ContentStore
) -> None:
    base = {"bin/sh": b"#!shell"}
    first = make_image([base, {"one": b"1"}], arch=HOST_ARCH)
    second = make_image([base, {"two": b"2"}], arch=HOST_ARCH)
    files = docker_save([(first, ["first:1"]), (second, ["second:2"])])
    manifest = json.loads(files["manifest.json"])
    shared = manifest[1]["Layers"][0]
    target = manifest[0]["Layers"][0]
    del files[shared]  # docker save links a repeated layer to its first copy
    symlinks = {shared: "../" + target}
    archive = write_tar(files, tmp_path / "s.tar", symlinks=symlinks)
    results = import_archive(archive, store)
    assert [r.names for r in results] == [
        ("docker.io/library/first:1",),
        ("docker.io/library/second:2",),
    ]
    assert_image_stored(store, results[0], first)
    assert_image_stored(store, results[1], second)


def test_docker_save_rewrites_identical_synthesis(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    a = import_archive(write_tar(docker_save([(image, ["a"])]), tmp_path / "a.tar"), store)
    b = import_archive(write_tar(docker_save([(image, ["b"])]), tmp_path / "b.tar"), store)
    assert a[0].manifest_digest == b[0].manifest_digest  # deterministic manifest


def test_docker_save_corrupted_config(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = docker_save([(image, ["busybox"])])
    name = f"{hex_of(image.config_digest)}.json"
    files[name] = files[name].replace(b"/bin/sh", b"/bin/xx")
    with pytest.raises(DataLoss, match=f"{name} is corrupt"):
        import_archive(write_tar(files, tmp_path / "s.tar"), store)
    assert list(store.digests()) == []


def test_docker_save_corrupted_layer(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = docker_save([(image, ["busybox"])])
    layer = json.loads(files["manifest.json"])[0]["Layers"][1]
    files[layer] = files[layer].replace(b"hello", b"HELLO")
    with pytest.raises(DataLoss, match=r"layer\.tar"):
        import_archive(write_tar(files, tmp_path / "s.tar"), store)
    assert not store.has(image.layer_digests[1])
    assert manifests_in(store) == set()


def test_docker_save_missing_layer(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = docker_save([(image, ["busybox"])])
    layer = json.loads(files["manifest.json"])[0]["Layers"][0]
    del files[layer]
    with pytest.raises(InvalidArgument, match=f"{layer} is missing"):
        import_archive(write_tar(files, tmp_path / "s.tar"), store)
    assert manifests_in(store) == set()


@pytest.mark.parametrize("bad", ["../escape/layer.tar", "/etc/passwd", "a/../../b", "x/../y"])
def test_docker_save_rejects_paths_leaving_the_archive(
    tmp_path: Path, store: ContentStore, image: Image, bad: str
) -> None:
    files = docker_save([(image, ["busybox"])])
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"][0] = bad
    files["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(UnsafeContent, match=re.escape("must not contain '..'")):
        import_archive(write_tar(files, tmp_path / "s.tar"), store)


def test_docker_save_invalid_repo_tag(tmp_path: Path, store: ContentStore, image: Image) -> None:
    files = docker_save([(image, ["Busybox:latest"])])
    with pytest.raises(InvalidArgument, match=r"RepoTags.*must be lowercase"):
        import_archive(write_tar(files, tmp_path / "s.tar"), store)


def test_docker_save_malformed_manifest_json(tmp_path: Path, store: ContentStore) -> None:
    archive = write_tar({"manifest.json": b'{"Config": "x"}'}, tmp_path / "s.tar")
    with pytest.raises(InvalidArgument, match="list of objects"):
        import_archive(archive, store)


def test_docker_25_archive_uses_index_and_repo_tags(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    files = docker_save_oci(image, ["busybox:latest", "quay.io/a/b:c"])
    (result,) = import_archive(write_tar(files, tmp_path / "s.tar"), store)
    assert result.names == (BUSYBOX, "quay.io/a/b:c")
    # index.json wins: the stored manifest is the archive's own OCI manifest, not a synthesis.
    assert result.manifest_digest == image.manifest_digest
    assert result.manifest.media_type == mf.OCI_MANIFEST
    assert_image_stored(store, result, image)


# --- what is not an archive ----------------------------------------------------------


def test_missing_path_is_not_found(tmp_path: Path, store: ContentStore) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        import_archive(tmp_path / "nope.tar", store)


@pytest.mark.parametrize(
    "content", [b"", b"this is not an archive\n" * 100, b"\x1f\x8b\x08\x00garbage" * 10]
)
def test_garbage_file_lists_accepted_formats(
    tmp_path: Path, store: ContentStore, content: bytes
) -> None:
    path = tmp_path / "junk.tar"
    path.write_bytes(content)
    with pytest.raises(InvalidArgument, match=r"OCI image layout.*docker save"):
        import_archive(path, store)


def test_tar_without_index_or_manifest(tmp_path: Path, store: ContentStore) -> None:
    archive = write_tar({"hello.txt": b"hi"}, tmp_path / "x.tar")
    with pytest.raises(InvalidArgument, match=r"neither index\.json nor manifest\.json"):
        import_archive(archive, store)


@pytest.mark.parametrize(
    "files",
    [{"index.json": index_json([])}, {"manifest.json": b"[]"}],
)
def test_archive_listing_no_images(
    tmp_path: Path, store: ContentStore, files: dict[str, bytes]
) -> None:
    with pytest.raises(InvalidArgument, match="lists no images"):
        import_archive(write_tar(files, tmp_path / "x.tar"), store)


def test_empty_directory(tmp_path: Path, store: ContentStore) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match=r"neither index\.json nor manifest\.json"):
        import_archive(tmp_path / "empty", store)


def test_truncated_tar_gz_is_data_loss(tmp_path: Path, store: ContentStore, image: Image) -> None:
    archive = write_tar(oci_layout([(image, {})]), tmp_path / "a.tar.gz", gz=True)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataLoss, match="truncated or corrupt"):
        import_archive(archive, store)
    assert manifests_in(store) == set()


def test_nothing_is_extracted_next_to_the_archive(
    tmp_path: Path, store: ContentStore, image: Image
) -> None:
    archive = write_tar(oci_layout([(image, {})]), tmp_path / "a.tar")
    before = sorted(p.name for p in tmp_path.iterdir())
    import_archive(archive, store)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list((store.root / "ingest").iterdir()) == []

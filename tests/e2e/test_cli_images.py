"""The `podling` client as a user types it, against a real podlingd and registry."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import registry_config
from tests.support import archives
from tests.support.daemon import Daemon
from tests.support.images import (
    build_image,
    busybox_rootfs_layer,
    layer,
    push_image,
    write_oci_archive,
)
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root

PODLING = str(Path(sys.executable).parent / "podling")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry"), users={"carol": "pw"}) as reg:
        yield reg


@pytest.fixture
def daemon(tmp_path: Path, registry: RegistryServer) -> Iterator[Daemon]:
    with Daemon(tmp_path / "daemon", registry_config(registry.host)) as d:
        yield d


def run(d: Daemon, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": d.endpoint}
    proc = subprocess.run([PODLING, *args], capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def push(registry: RegistryServer, repo: str, extra: bytes = b"x") -> tuple[str, str]:
    img = build_image([busybox_rootfs_layer(), layer({"extra": extra})], "gzip", {"User": "app"})
    push_image(registry.url, repo, "v1", img, auth=("carol", "pw"))
    return f"{registry.host}/{repo}:v1", img.config_digest


def test_version(daemon: Daemon) -> None:
    out = run(daemon, "version").stdout
    assert "RuntimeName:  podling" in out and "RuntimeApiVersion:  v1" in out


def test_pull_images_inspect_rmi(daemon: Daemon, registry: RegistryServer) -> None:
    ref, image_id = push(registry, "cli/app")
    assert run(daemon, "pull", "--creds", "carol:pw", ref).stdout.strip() == (
        f"Image is up to date for {image_id}"
    )
    table = run(daemon, "images").stdout.splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert table[1].split()[:3] == [f"{registry.host}/cli/app", "v1", image_id[7:20]]
    assert run(daemon, "images", "-q").stdout.split() == [image_id]
    digests = run(daemon, "images", "--digests").stdout.splitlines()
    assert "DIGEST" in digests[0] and len(digests[1].split()) == 5
    as_json = json.loads(run(daemon, "images", "-o", "json").stdout)
    assert as_json["images"][0]["repoTags"] == [ref]
    as_yaml = yaml.safe_load(run(daemon, "images", "-o", "yaml").stdout)
    assert as_yaml["images"][0]["id"] == image_id
    inspect = json.loads(run(daemon, "inspecti", ref).stdout)
    assert inspect["status"]["username"] == "app"
    assert inspect["info"]["info"]["imageSpec"]["config"]["User"] == "app"
    assert run(daemon, "rmi", ref).stdout.strip() == f"Deleted: {image_id}"
    assert run(daemon, "images", "-q").stdout == ""


def test_rmi_prune_and_unknown(daemon: Daemon, registry: RegistryServer) -> None:
    a, _ = push(registry, "cli/a", b"a")
    b, _ = push(registry, "cli/b", b"b")
    run(daemon, "pull", "--creds", "carol:pw", a)
    run(daemon, "pull", "--creds", "carol:pw", b)
    missing = run(daemon, "rmi", "no/such:image", ok=False)
    assert missing.returncode == 1 and "no such image: no/such:image" in missing.stderr
    # no container runs, so every image is unused
    assert len(run(daemon, "rmi", "--prune").stdout.splitlines()) == 2
    assert run(daemon, "images", "-q").stdout == ""


def test_load_oci_and_docker_archives(daemon: Daemon, tmp_path: Path) -> None:
    img = build_image([busybox_rootfs_layer()], "gzip")
    oci = write_oci_archive(img, "example.com/demo/oci:1", tmp_path / "oci.tar")
    out = run(daemon, "load", str(oci)).stdout
    assert f"Loaded image: example.com/demo/oci:1 ({img.config_digest})" in out
    plain = archives.make_image([{"hello": b"world"}])
    saved = archives.write_tar(
        archives.docker_save([(plain, ["legacy/app:2"])]), tmp_path / "d.tar"
    )
    assert "docker.io/legacy/app:2" in run(daemon, "load", str(saved)).stdout
    tags = {
        t
        for i in json.loads(run(daemon, "images", "-o", "json").stdout)["images"]
        for t in i.get("repoTags", [])
    }
    assert tags == {"example.com/demo/oci:1", "docker.io/legacy/app:2"}
    digests = json.loads(run(daemon, "inspecti", "example.com/demo/oci:1").stdout)
    assert digests["status"]["repoDigests"] == [f"example.com/demo/oci@{img.manifest_digest}"]
    bad = tmp_path / "garbage.tar"
    bad.write_bytes(b"not an archive at all")
    failed = run(daemon, "load", str(bad), ok=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1
    assert "INVALID_ARGUMENT" in failed.stderr


def test_imagefsinfo_and_info(daemon: Daemon) -> None:
    fs = json.loads(run(daemon, "imagefsinfo").stdout)
    assert fs["imageFilesystems"][0]["fsId"]["mountpoint"] == str(daemon.root)
    info = json.loads(run(daemon, "info").stdout)
    types = {c["type"] for c in info["status"]["conditions"]}
    assert types == {"RuntimeReady", "NetworkReady"}
    assert info["config"]["socket"] == str(daemon.socket)


def test_errors_are_one_line_without_traceback(daemon: Daemon, registry: RegistryServer) -> None:
    for args, fragment in (
        (["pull", "Not/Valid"], "INVALID_ARGUMENT"),
        (["pull", f"{registry.host}/cli/private:v1"], "UNAUTHENTICATED"),
        (["pull", "--creds", "carol:wrong", f"{registry.host}/cli/app:v1"], "UNAUTHENTICATED"),
    ):
        proc = run(daemon, *args, ok=False)
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_no_daemon_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": f"unix://{tmp_path}/none.sock"}
    proc = subprocess.run([PODLING, "-t", "2", "images"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "cannot connect to podlingd" in proc.stderr


def test_pull_shows_progress_per_layer_on_a_terminal(
    daemon: Daemon, registry: RegistryServer
) -> None:
    img = build_image(
        [busybox_rootfs_layer(), layer({"big": os.urandom(3 << 20)})], "gzip", {"Cmd": ["sh"]}
    )
    push_image(registry.url, "cli/big", "v1", img, auth=("carol", "pw"))
    ref = f"{registry.host}/cli/big:v1"
    screen = _run_on_tty(daemon, ["pull", "--creds", "carol:pw", ref])
    for blob in img.layers:
        assert blob.digest[7:19] in screen  # one progress row per layer
    assert f"Image is up to date for {img.config_digest}" in screen


def _run_on_tty(d: Daemon, args: list[str]) -> str:
    env = {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": d.endpoint, "COLUMNS": "120"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [PODLING, *args], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(leader)
    assert proc.returncode == 0, out
    return out.decode(errors="replace")

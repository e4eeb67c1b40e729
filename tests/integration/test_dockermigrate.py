"""`podling migrate docker` into a real daemon, from a data root with real overlay whiteouts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cri_api.v1 import api_pb2 as pb

from podling.cli.client import main
from tests.support.daemon import Daemon
from tests.support.dockerroot import DockerRoot, make_layer, sha

pytestmark = pytest.mark.root

BASE = make_layer(
    {
        "etc/": None,
        "etc/old.conf": b"old\n",
        "var/": None,
        "var/cache/": None,
        "var/cache/stale": b"stale\n",
        "bin/": None,
        "bin/tool": b"\x7fELF" + bytes(5000),
    }
)
TOP = make_layer(
    {
        "etc/": None,
        "etc/.wh.old.conf": b"",
        "var/": None,
        "var/cache/": None,
        "var/cache/.wh..wh..opq": b"",
        "var/cache/fresh": b"fresh\n",
    }
)
DIGEST = "sha256:" + "cd" * 32


def test_migrates_images_with_whiteouts_keeping_names_and_ids(tmp_path: Path) -> None:
    docker = DockerRoot(tmp_path / "docker", devices=True)
    image_id = docker.add_image([BASE, TOP], ["tool:1.0", f"tool@{DIGEST}"])
    top_diff = docker.diff_dir(docker.add_layer(sha(BASE), TOP))
    assert stat.S_ISCHR((top_diff / "etc" / "old.conf").lstat().st_mode)
    assert os.getxattr(top_diff / "var" / "cache", "trusted.overlay.opaque") == b"y"
    cni = tmp_path / "cni"
    cni.mkdir()
    with Daemon(tmp_path / "d", f'[network]\ncni_conf_dir = "{cni}"\n') as d:
        args = ["-r", d.endpoint, "migrate", "docker", "--root", str(docker.root)]
        args += ["--work-dir", str(tmp_path)]  # staged here, and removed after each run
        for _ in range(2):  # a second run re-imports the same image harmlessly
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            assert result.output == (
                f"docker.io/library/tool:1.0, docker.io/library/tool@{DIGEST} "
                f"({image_id}): imported\n"
            )
        st = d.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="tool:1.0")))
        assert st.image.id == image_id
        assert list(st.image.repo_tags) == ["docker.io/library/tool:1.0"]
        assert f"docker.io/library/tool@{DIGEST}" in st.image.repo_digests
        images = d.images.ListImages(pb.ListImagesRequest()).images
        assert [i.id for i in images] == [image_id]
    assert not list(tmp_path.glob("podling-migrate-*"))

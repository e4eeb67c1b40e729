"""Fixtures for integration tests: a real registry with test images, and a real podlingd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.images import (
    BuiltImage,
    Dir,
    Opaque,
    Whiteout,
    build_image,
    busybox_rootfs_layer,
    layer,
    push_image,
)
from tests.support.registry import RegistryServer


def registry_config(host: str, extra: str = "") -> str:
    """podlingd config that reaches the test registry over plain http (loopback only)."""
    return (
        f'[images]\npull_stall_timeout = 5\n[images.registries."{host}"]\ninsecure = true\n{extra}'
    )


def whiteout_image() -> BuiltImage:
    """Three layers: busybox; files + a dir; whiteouts of one file and an opaque dir."""
    base = busybox_rootfs_layer()
    second = layer(
        {
            "etc/motd": b"hello\n",
            "etc/gone": b"to be whited out\n",
            "data": Dir(),
            "data/old": b"old\n",
        }
    )
    third = layer({"etc/gone": Whiteout(), "data": Opaque(), "data/new": b"new\n"})
    return build_image([base, second, third], "gzip", {"Cmd": ["sh"], "User": "1000"})


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def daemon(tmp_path: Path, registry: RegistryServer) -> Iterator[Daemon]:
    with Daemon(tmp_path, registry_config(registry.host)) as d:
        yield d


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    started: list[Daemon] = []

    def make(config: str) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", config)
        started.append(d.start())
        return d

    yield make
    for d in started:
        d.stop()


def push(registry: RegistryServer, repo: str, tag: str, image: BuiltImage) -> str:
    push_image(registry.url, repo, tag, image)
    return f"{registry.host}/{repo}:{tag}"


# pod fixtures: `env` (a module-scoped daemon on the module's BRIDGE and SUBNET) and `clean`
from tests.integration.pod_fixtures import clean, env  # noqa: E402, F401

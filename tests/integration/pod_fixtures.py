"""A module-scoped podlingd that runs pods on its own bridge, subnet and cgroup parent.

The bridge and the cgroup parent are created before the tests and removed after them,
so the per-test leak check sees only what each test itself leaves behind.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.pods import load_busybox, pod_daemon_config, remove_all


def make_cgroup_parent(name: str) -> None:
    for h in Path("/sys/fs/cgroup").iterdir():
        if (h / "cgroup.procs").exists():
            (h / name).mkdir(exist_ok=True)


def remove_cgroup_parent(name: str) -> None:
    for h in Path("/sys/fs/cgroup").iterdir():
        d = h / name
        if d.is_dir():
            d.rmdir()


class PodEnv:
    def __init__(self, base: Path, bridge: str, subnet: str, extra: str = "") -> None:
        self.base = base
        self.bridge = bridge
        self.subnet = subnet
        self.logs = base / "logs"
        self.cgroup_parent = f"podling-{bridge}"  # one per module: modules may run at once
        config = pod_daemon_config(base, bridge, subnet, extra, self.cgroup_parent)
        self.daemon = Daemon(base / "daemon", config)

    def __enter__(self) -> PodEnv:
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        try:
            make_cgroup_parent(self.cgroup_parent)
            self.daemon.start()
            load_busybox(self.daemon, self.base)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.daemon.channel is not None:
                remove_all(self.daemon)
        finally:
            self.daemon.stop()
            subprocess.run(["ip", "link", "del", self.bridge], check=False)
            remove_cgroup_parent(self.cgroup_parent)


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[PodEnv]:
    """One daemon per test module; each module names its own bridge and subnet."""
    bridge, subnet = request.module.BRIDGE, request.module.SUBNET
    with PodEnv(tmp_path_factory.mktemp("pods"), bridge, subnet) as e:
        yield e


@pytest.fixture
def clean(env: PodEnv) -> Iterator[PodEnv]:
    """Each test starts and ends with no pods."""
    yield env
    remove_all(env.daemon)

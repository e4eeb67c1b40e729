"""SIGHUP reloads podlingd's config: registry mirrors, runtime handlers and the log level
apply live, a changed socket is named for a restart, and a config that does not load
leaves the running one in place."""

from __future__ import annotations

import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.conftest import push
from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.images import build_image, busybox_rootfs_layer
from tests.support.pods import (
    container_config,
    pod_config,
    pod_daemon_config,
    run_pod,
    start_container,
    wait_state,
)
from tests.support.registry import RegistryServer, free_port

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]
BRIDGE, SUBNET = "plload2", "10.93.16.0/24"
RUNNING = pb.ContainerState.CONTAINER_RUNNING


class FileOnlyDaemon(Daemon):
    """A podlingd whose every setting comes from its config file (no command-line
    overrides, which would win over the file on a reload too)."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "podling.cli.daemon", "--config", str(self.config)]

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


def top_keys(d: Daemon, sock: Path | None = None) -> str:
    return f'root = "{d.root}"\nstate = "{d.state}"\nsocket = "{sock or d.socket}"\n'


@pytest.fixture
def reload_env(tmp_path: Path, registry: RegistryServer) -> Iterator[tuple[PodEnv, str]]:
    """A pod environment whose daemon logs at info level; (env, its network config)."""
    e = PodEnv(tmp_path, BRIDGE, SUBNET)
    net = pod_daemon_config(tmp_path, BRIDGE, SUBNET, cgroup_parent=e.cgroup_parent)
    d = FileOnlyDaemon(tmp_path / "daemon")
    d.config.write_text(top_keys(d) + '[log]\nlevel = "info"\n' + net)
    e.daemon = d
    with e:
        yield e, net


def wait_log(d: Daemon, needle: str, count: int, timeout: float = 20) -> str:
    """The daemon's log once `needle` occurs `count` times in it."""
    deadline = time.monotonic() + timeout
    while (text := d.log.read_text()).count(needle) < count:
        assert time.monotonic() < deadline, f"{needle!r} x{count} never logged:\n{text}"
        time.sleep(0.05)
    return text


def debug_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " DEBUG " in line]


def handlers(d: Daemon) -> set[str]:
    return {h.name for h in d.runtime.Status(pb.StatusRequest()).runtime_handlers}


def pull(d: Daemon, ref: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref))).image_ref)


def test_sighup_reload(reload_env: tuple[PodEnv, str], registry: RegistryServer) -> None:
    e, net = reload_env
    d = e.daemon
    assert isinstance(d, FileOnlyDaemon)
    image = build_image([busybox_rootfs_layer()], "gzip", {"Cmd": ["sh"]})
    push(registry, "rel-load-reload/busybox", "1", image)
    push(registry, "rel-load-reload/busybox", "2", image)
    # a registry host where nothing listens: only a mirror can serve its images
    only_mirror = f"127.0.0.1:{free_port()}"
    ref = f"{only_mirror}/rel-load-reload/busybox"
    with pytest.raises(grpc.RpcError) as err:
        pull(d, f"{ref}:1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "crun2" not in handlers(d) and debug_lines(d.log.read_text()) == []

    other_sock = d.base / "other.sock"
    d.config.write_text(
        top_keys(d, other_sock)
        + '[log]\nlevel = "debug"\n'
        + f'[images.registries."{only_mirror}"]\nmirrors = ["{registry.url}"]\ninsecure = true\n'
        + '[runtimes.crun2]\nbinary = "crun"\n'
        + net
    )
    d.hup()
    text = wait_log(d, "config reloaded", 1)
    assert "config key socket changed; restart podlingd to apply" in text
    assert "config key log.level changed" not in text  # applied, not a restart
    assert not other_sock.exists() and d.socket.exists()  # still serving where it was

    assert pull(d, f"{ref}:1").startswith("sha256:")  # through the new mirror
    assert "crun2" in handlers(d)
    pcfg = pod_config(log_dir=e.logs)
    pod_id = run_pod(d, pcfg, handler="crun2")
    st = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert st.runtime_handler == "crun2"
    cid = start_container(d, pod_id, pcfg, container_config("main", "sleep", "1000"))
    assert wait_state(d, cid, RUNNING).state == RUNNING
    _drop_streaming_connection(d)
    logged = wait_log(d, "streaming connection ended", 1)
    assert [ln for ln in debug_lines(logged) if "podling.reload" not in ln]

    # crun2 taken out of the config while a pod runs on it: kept, and the log says why
    mirror = f'[images.registries."{only_mirror}"]\nmirrors = ["{registry.url}"]\n'
    d.config.write_text(top_keys(d) + '[log]\nlevel = "debug"\n' + mirror + net)
    d.hup()
    text = wait_log(d, "config reloaded", 2)
    assert "runtime handler crun2 is still used by pods or containers" in text
    assert "crun2" in handlers(d)
    assert wait_state(d, cid, RUNNING, timeout=0.5).state == RUNNING

    # a config that does not load: logged, and the running one stays
    d.config.write_text(top_keys(d) + "[log\nlevel = 'info'\n")
    d.hup()
    text = wait_log(d, "config reload failed", 1)
    assert "not valid TOML" in text and "the previous config stays in effect" in text
    assert "crun2" in handlers(d)
    assert pull(d, f"{ref}:2").startswith("sha256:")  # the mirror is still configured
    before = len(debug_lines(d.log.read_text()))
    _drop_streaming_connection(d)
    wait_log(d, "streaming connection ended", 2)
    assert len(debug_lines(d.log.read_text())) > before  # still at debug level
    assert d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.state == (
        RUNNING
    )


def _drop_streaming_connection(d: Daemon) -> None:
    """Connect to the streaming server and reset the connection before any request:
    the server logs that at debug level."""
    pod = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items[0]
    url = d.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id)).url
    host, port = url.split("/")[2].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\n")  # half a request head, then a reset
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

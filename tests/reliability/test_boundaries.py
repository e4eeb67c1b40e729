"""The daemon's boundaries: socket permissions, the streaming server's address and
tokens, and paths that would leave their roots.

Token semantics (one use, kind-bound, expiry, limit) are unit-tested in
tests/unit/test_stream_tokens.py and the URL shape in tests/integration/test_streaming.py;
here a real daemon refuses unknown and reused tokens over HTTP.
"""

from __future__ import annotations

import http.client
import os
import stat
import urllib.parse
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling.config import Config
from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.pods import container_config, pod_config, rpc_code, run_pod, start_container

pytestmark = pytest.mark.root

BRIDGE = "plhost1"
SUBNET = "10.93.22.0/24"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_socket_is_0660_root_root(clean: PodEnv) -> None:
    st = os.stat(clean.daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_socket_group_is_configurable(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "grp", 'socket_group = "4242"\n').start()
    try:
        st = os.stat(d.socket)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, 4242)
    finally:
        d.stop()
    bad = Daemon(tmp_path / "bad", 'socket_group = "no-such-group-podling"\n')
    with pytest.raises(RuntimeError, match=r"socket_group 'no-such-group-podling': no such group"):
        bad.start()
    assert not bad.socket.exists()


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                out.append(addr)
    return out


def _get(url: str) -> int:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)
    try:
        conn.request("GET", u.path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_streaming_server_loopback_and_tokens(clean: PodEnv) -> None:
    assert Config().streaming.address == "127.0.0.1"
    d = clean.daemon
    pod = pod_config(log_dir=clean.logs)
    pod_id = run_pod(d, pod)
    cid = start_container(d, pod_id, pod, container_config("sleeper", "sleep", "600"))
    url = d.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    assert _listening(port) == ["0100007F"], "the streaming server must bind 127.0.0.1 only"

    base = url.rsplit("/", 1)[0]
    assert _get(f"{base}/not-a-token") == 404
    assert _get(f"{base.replace('/exec', '/attach')}/{url.rsplit('/', 1)[1]}") == 404
    assert _get(url) == 404, "a token is burnt by a use of the wrong kind"
    fresh = d.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    first = _get(fresh)
    assert first != 404  # the token was good (the request is not an upgrade: refused later)
    assert _get(fresh) == 404, "a token must not be usable twice"


@pytest.mark.parametrize(
    ("log_dir", "log_path"),
    [
        (None, "../../../rel-hostile-escape.log"),
        (None, "/tmp/rel-hostile-escape.log"),
        (None, "a/../../rel-hostile-escape.log"),
        (None, "x\x00y.log"),
        ("relative/logs", "c.log"),
        ("/var/log/pods/../../tmp", "c.log"),
    ],
)
def test_log_paths_escaping_their_root_are_refused(
    clean: PodEnv, log_dir: str | None, log_path: str
) -> None:
    d = clean.daemon
    pod = pod_config(log_dir=clean.logs)
    if log_dir is not None:
        pod.log_directory = log_dir
        assert rpc_code(lambda: run_pod(d, pod)) == INVALID
        return
    pod_id = run_pod(d, pod)
    cfg = container_config("c", "sleep", "60")
    cfg.log_path = log_path
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod)
    assert rpc_code(lambda: d.runtime.CreateContainer(req)) == INVALID
    assert not Path("/tmp/rel-hostile-escape.log").exists()


@pytest.mark.parametrize("container_path", ["/../../etc", "/data/../../x", "relative", "/a\x00b"])
def test_mount_container_paths_escaping_the_rootfs_are_refused(
    clean: PodEnv, container_path: str, tmp_path: Path
) -> None:
    d = clean.daemon
    pod = pod_config(log_dir=clean.logs)
    pod_id = run_pod(d, pod)
    cfg = container_config("c", "sleep", "60")
    cfg.mounts.add(container_path=container_path, host_path=str(tmp_path))
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod)
    assert rpc_code(lambda: d.runtime.CreateContainer(req)) == INVALID

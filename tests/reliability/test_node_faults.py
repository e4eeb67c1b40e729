"""Node faults: a CNI plugin that fails or is missing, an OCI runtime that fails, a
missing conmon or runtime binary. Each RPC fails naming the cause, nothing leaks (no pod
or container record, dir, netns, CNI cache or cgroup), and Status says NetworkReady or
RuntimeReady false, with a reason, when the node cannot work at all.

Covered elsewhere: a plugin that exceeds its timeout (tests/unit/test_cni.py
test_timeout_is_deadline_exceeded); a runtime handler that is not configured
(tests/integration/test_handlers.py test_unknown_handler_names_the_configured_ones).
A node without any CNI config cannot be made here: the daemon writes its default network
when the conf dir holds none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling.oslib import cgroups
from tests.integration.pod_fixtures import make_cgroup_parent
from tests.support.daemon import Daemon
from tests.support.pods import container_config, load_busybox, pod_config, remove_all

pytestmark = pytest.mark.root

BRIDGE, SUBNET = "plfault0", "10.93.13.0/24"
CGROUP_PARENT = f"podling-{BRIDGE}"

FAILING_PLUGIN = """#!/bin/sh
cat >/dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID" >> {log}
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{{"cniVersion":"1.0.0","code":7,'
  echo '"msg":"plfault: no route to the fabric","details":"injected"}}'
  exit 1
fi
exit 0
"""
WORKING_PLUGIN = """#!/bin/sh
cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0","interfaces":[],"ips":[]}'
exit 0
"""
FAILING_RUNTIME = """#!/bin/sh
for a in "$@"; do
  if [ "$a" = create ]; then
    echo "plfault-runtime: cannot create the container: injected failure" >&2
    exit 1
  fi
done
exec runc "$@"
"""


class Node:
    """A daemon of this module, with its CNI conf dir and a private plugin bin dir."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cni = base / "cni"
        self.bin = base / "bin"
        self.cni.mkdir(parents=True)
        self.bin.mkdir()
        self.daemon: Daemon | None = None

    def start(self, extra: str = "", top: str = "") -> Daemon:
        config = (
            f'{top}[network]\ncni_conf_dir = "{self.cni}"\n'
            f'cni_bin_dirs = ["{self.bin}", "/usr/lib/cni"]\n'
            f'default_bridge = "{BRIDGE}"\ndefault_subnet = "{SUBNET}"\n'
            f'[runtime]\ncgroup_parent = "/{CGROUP_PARENT}"\nstop_timeout = 2\n{extra}'
        )
        self.daemon = Daemon(self.base / "d", config).start()
        return self.daemon

    def network(self, *plugin_types: str) -> None:
        conf = {
            "cniVersion": "1.0.0",
            "name": "rel-fault",
            "plugins": [{"type": t} for t in plugin_types],
        }
        (self.cni / "10-rel-fault.conflist").write_text(json.dumps(conf))

    def script(self, name: str, text: str) -> Path:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)
        return path


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    make_cgroup_parent(CGROUP_PARENT)
    n = Node(tmp_path / "node")
    try:
        yield n
    finally:
        try:
            if n.daemon is not None and n.daemon.channel is not None:
                remove_all(n.daemon)
        finally:
            if n.daemon is not None:
                n.daemon.stop()
            cgroups.remove(CGROUP_PARENT)


def code_of(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details() or ""


def conditions(d: Daemon) -> dict[str, pb.RuntimeCondition]:
    return {c.type: c for c in d.runtime.Status(pb.StatusRequest()).status.conditions}


def run_pod(d: Daemon, cfg: pb.PodSandboxConfig, handler: str = "") -> str:
    req = pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)
    return str(d.runtime.RunPodSandbox(req).pod_sandbox_id)


def own_pid_pod() -> pb.PodSandboxConfig:
    """A pod whose containers get PID namespaces of their own: no infra process."""
    cfg = pod_config()
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    return cfg


def pod_cgroups() -> list[str]:
    return sorted(p.name for p in (Path("/sys/fs/cgroup/pids") / CGROUP_PARENT).iterdir()
                  if p.is_dir())  # fmt: skip


def assert_no_pod_left(d: Daemon) -> None:
    assert list(d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    assert list((d.state / "pods").iterdir()) == []
    cache = d.state / "cni" / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []
    assert pod_cgroups() == []


def test_cni_plugin_failing(node: Node) -> None:
    calls = node.base / "plugin-calls"
    node.script("plfault-fail", FAILING_PLUGIN.format(log=calls))
    node.network("plfault-fail")
    d = node.start()
    assert conditions(d)["NetworkReady"].status  # installed and configured: it may work
    code, msg = code_of(lambda: run_pod(d, pod_config()))
    assert code == grpc.StatusCode.INTERNAL, msg
    assert "plfault-fail" in msg and "plfault: no route to the fabric" in msg, msg
    assert_no_pod_left(d)
    commands = [line.split()[0] for line in calls.read_text().splitlines()]
    assert commands == ["ADD", "DEL"], "the failed ADD must be undone with a DEL"


def test_cni_plugin_missing(node: Node) -> None:
    node.network("plfault-nosuch")
    d = node.start()
    ready = conditions(d)["NetworkReady"]
    assert not ready.status
    assert ready.reason == "NetworkPluginNotReady"
    assert "plfault-nosuch" in ready.message and str(node.bin) in ready.message
    code, msg = code_of(lambda: run_pod(d, pod_config()))
    assert code == grpc.StatusCode.UNAVAILABLE, msg
    assert "plfault-nosuch" in msg and "install" in msg, msg
    assert_no_pod_left(d)
    # installed: the node recovers without a restart
    node.script("plfault-nosuch", WORKING_PLUGIN)
    assert conditions(d)["NetworkReady"].status
    pod_id = run_pod(d, pod_config())
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert_no_pod_left(d)


def broken_runtime(node: Node) -> Daemon:
    node.network("loopback")  # no bridge needed: these tests are about the runtime
    wrapper = node.script("plfault-runtime", FAILING_RUNTIME)
    d = node.start(f'[runtimes.plfault-broken]\nbinary = "{wrapper}"\n')
    load_busybox(d, node.base)
    return d


def test_runtime_failing_at_create_container(node: Node) -> None:
    d = broken_runtime(node)
    cfg = own_pid_pod()
    pod_id = run_pod(d, cfg, "plfault-broken")
    snapshots = sorted(p.name for p in (d.root / "snapshots").iterdir())
    req = pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config("c", "true"), sandbox_config=cfg
    )
    code, msg = code_of(lambda: d.runtime.CreateContainer(req))
    assert code == grpc.StatusCode.INTERNAL, msg
    assert "injected failure" in msg, msg
    assert list(d.runtime.ListContainers(pb.ListContainersRequest()).containers) == []
    assert list((d.state / "containers").iterdir()) == []
    assert sorted(p.name for p in (d.root / "snapshots").iterdir()) == snapshots
    runtime_root = d.state / "runtimes" / "plfault-broken"
    assert not runtime_root.exists() or list(runtime_root.iterdir()) == []
    assert [c for c in pod_cgroups() if c != pod_id] == []


def test_runtime_failing_at_infra_start(node: Node) -> None:
    d = broken_runtime(node)
    code, msg = code_of(lambda: run_pod(d, pod_config(), "plfault-broken"))
    assert code == grpc.StatusCode.INTERNAL, msg
    assert "injected failure" in msg, msg
    assert_no_pod_left(d)


@pytest.mark.parametrize(
    ("what", "top", "extra", "named"),
    [
        ("conmon", "", 'conmon = "/nonexistent/plfault-conmon"\n', "plfault-conmon"),
        (
            "runtime",
            'default_runtime = "plfault-gone"\n',
            '[runtimes.plfault-gone]\nbinary = "/nonexistent/plfault-runc"\n',
            "plfault-runc",
        ),
    ],
)
def test_binary_missing_makes_runtime_not_ready(
    what: str, top: str, extra: str, named: str, node: Node
) -> None:
    node.network("loopback")
    d = node.start(extra=extra, top=top)
    ready = conditions(d)["RuntimeReady"]
    assert not ready.status, what
    assert ready.reason == "RuntimeNotReady"
    assert named in ready.message, ready.message
    code, msg = code_of(lambda: run_pod(d, pod_config()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
    assert named in msg, msg
    assert_no_pod_left(d)

"""Hostile CRI requests against a real podlingd: property-based (hypothesis).

Strategies build requests for every RuntimeService and ImageService RPC, mixing valid
skeletons with hostile fields: huge strings, NUL bytes, path traversal in names, log
paths and mount paths, negative or enormous numbers. For every example:

- the answer is OK or a specific status, never INTERNAL or UNKNOWN (nor a client-side
  deadline: the daemon must not hang);
- the daemon process is alive and answers Version afterwards;
- no file appears outside the daemon's dirs: a canary dir, the repository (the
  daemon's cwd), / and /tmp are checked for the marker every hostile path carries;
- everything the example created is removed again (the leak fixture checks the rest).

Short mode (CI) runs a bounded number of examples (the module takes about a minute);
`PODLING_LONG=1` runs many more. Each test prints its counts (`pytest -s`).
"""

from __future__ import annotations

import glob
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.pod_fixtures import PodEnv
from tests.reliability.conftest import examples
from tests.support.pods import BUSYBOX, container_config, pod_config, remove_all, run_pod

pytestmark = pytest.mark.root

BRIDGE = "plhost0"
SUBNET = "10.93.10.0/24"
MARK = "rel-hostile-mark"
CGROUP_PARENT = f"/podling-{BRIDGE}"
REPO = Path(__file__).resolve().parents[2]
CANARY = Path(f"/tmp/{MARK}-canary-{uuid.uuid4().hex[:8]}")
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED)
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
U32 = st.integers(0, 2**32 - 1)
IMAGE_METHODS = {"PullImage", "ImageStatus", "RemoveImage", "ListImages", "ImageFsInfo"}


# --- hostile values -----------------------------------------------------------------------

ESCAPES = [
    "../" * 12 + f"{str(CANARY).lstrip('/')}/{MARK}",
    f"{CANARY}/{MARK}",
    f"/proc/self/root{CANARY}/{MARK}",
    f"{MARK}/../../../{MARK}",
    f"/{MARK}",
    MARK,
    f"./{MARK}",
    f"{CANARY}/../{CANARY.name}/{MARK}",
]
ODD = ["", "\x00", f"{MARK}\x00x", "..", "../..", "/", ".", "-", "--help", "%s%n", "x" * 256]


def hostile_text(huge: bool = True) -> st.SearchStrategy[str]:
    parts = [
        st.text(max_size=40),
        st.sampled_from(ESCAPES + ODD),
        st.text("./\x00" + MARK, max_size=60),
    ]
    if huge:
        parts.append(st.integers(5_000, 150_000).map(lambda n: "A" * n))
    return st.one_of(*parts)


HOSTILE_PERCENT = 4  # per field: most examples break one or two fields, some none


def maybe(valid: Any, hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The valid value most of the time (so deeper code is reached), else a hostile one."""
    return st.integers(0, 99).flatmap(lambda n: hostile if n < HOSTILE_PERCENT else st.just(valid))


def rarely(hostile: st.SearchStrategy[Any], empty: Any) -> st.SearchStrategy[Any]:
    """`empty` (a field left unset) most of the time, else a hostile value."""
    return maybe(empty, hostile)


RARE = rarely(st.just(True), False)


def text_map(huge: bool = False) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(hostile_text(huge), hostile_text(huge), max_size=3)


# --- checks ---------------------------------------------------------------------------------


class Prober:
    """Calls RPCs, counts answers by code and checks the properties after each example."""

    def __init__(self, env: PodEnv) -> None:
        self.env = env
        self.d = env.daemon
        self.codes: Counter[str] = Counter()
        self.examples = 0
        self.cgroups = _pod_cgroups(env)

    def call(self, method: str, request: Any, timeout: float = 60) -> Any:
        stub = self.d.images if method in IMAGE_METHODS else self.d.runtime
        try:
            response = getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            code = e.code()
            self.codes[f"{method}:{code.name}"] += 1
            # a server-side DEADLINE_EXCEEDED (an exec that timed out) is an answer; the
            # client's own ("Deadline Exceeded") means the daemon hung
            hung = code == grpc.StatusCode.DEADLINE_EXCEEDED and e.details() == "Deadline Exceeded"
            assert code not in BAD_CODES[:2] and not hung, f"{method}: {code.name}: {e.details()}"
            # gRPC's own refusal of an over-long status message hides the real code
            assert "metadata size" not in (e.details() or ""), f"{method}: {e.details()}"
            return None
        self.codes[f"{method}:OK"] += 1
        return response

    def check(self) -> None:
        self.examples += 1
        assert self.d.proc is not None and self.d.proc.poll() is None, "podlingd died"
        self.d.runtime.Version(pb.VersionRequest(), timeout=10)
        outside = [p for p in _marked() if not _allowed(p, self.env)]
        assert not outside, f"files appeared outside the daemon's dirs: {outside}"
        assert list(CANARY.iterdir()) == [], "something was written into the canary dir"
        leaked = _pod_cgroups(self.env) - self.cgroups
        assert not leaked, f"cgroups left behind: {sorted(leaked)}"

    def report(self, what: str) -> None:
        ok = sum(n for k, n in self.codes.items() if k.endswith(":OK"))
        print(f"\n{what}: {self.examples} examples, {sum(self.codes.values())} calls, {ok} OK")
        for key, n in sorted(self.codes.items()):
            print(f"  {key}: {n}")
        assert self.examples > 0


def _pod_cgroups(env: PodEnv) -> set[str]:
    """The cgroups under the module's cgroup parent (memory hierarchy), minus live pods'."""
    parent = Path("/sys/fs/cgroup/memory") / env.cgroup_parent
    found = {p.name for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()
    live = {p.id for p in env.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items}
    return found - live


def _marked() -> list[str]:
    """Every path carrying MARK in the places an escape would land."""
    found: list[str] = []
    for base in (REPO, Path("/"), Path("/tmp"), CANARY):
        found += [p for p in glob.glob(f"{base}/{MARK}*") if not p.startswith(str(CANARY))]
    for dirpath, dirs, files in os.walk(CANARY):
        found += [os.path.join(dirpath, n) for n in dirs + files]
    return found


def _allowed(path: str, env: PodEnv) -> bool:
    return path.startswith((str(env.base) + "/",))


@pytest.fixture(scope="module")
def canary() -> Iterator[Path]:
    CANARY.mkdir()
    yield CANARY
    CANARY.rmdir()  # fails if anything was left in it


@pytest.fixture
def probe(clean: PodEnv, canary: Path) -> Prober:
    return Prober(clean)


# --- pods -----------------------------------------------------------------------------------


@st.composite
def pod_configs(draw: st.DrawFn, logs: Path) -> pb.PodSandboxConfig:
    cfg = pod_config(log_dir=logs)
    md = cfg.metadata
    md.name = draw(maybe(md.name, hostile_text()))
    md.uid = draw(maybe(md.uid, hostile_text()))
    md.namespace = draw(maybe(md.namespace, hostile_text()))
    md.attempt = draw(maybe(0, U32))
    cfg.hostname = draw(maybe(cfg.hostname, hostile_text()))
    cfg.log_directory = draw(maybe(cfg.log_directory, hostile_text(huge=False)))
    cfg.labels.update(draw(rarely(text_map(), {})))
    cfg.annotations.update(draw(rarely(text_map(), {})))
    if draw(rarely(st.just(True), False)):
        cfg.dns_config.servers.extend(
            draw(st.lists(maybe("10.0.0.10", hostile_text()), max_size=3))
        )
        cfg.dns_config.searches.extend(draw(st.lists(hostile_text(), max_size=3)))
        cfg.dns_config.options.extend(draw(st.lists(hostile_text(), max_size=3)))
    for _ in range(draw(rarely(st.integers(1, 2), 0))):
        cfg.port_mappings.add(
            protocol=draw(st.one_of(st.integers(0, 2), I32)),
            container_port=draw(st.one_of(st.just(80), I32)),
            host_port=draw(st.sampled_from([0, -1, 65536, 2**31 - 1, -(2**31)])),
            host_ip=draw(maybe("", hostile_text(huge=False))),
        )
    linux = cfg.linux
    linux.cgroup_parent = draw(
        maybe(
            "",
            st.one_of(
                st.just(""), st.just(f"{CGROUP_PARENT}/{MARK}"), hostile_text(huge=False)
            ).filter(lambda p: not p.startswith("/") or p.startswith(CGROUP_PARENT) or ".." in p),
        )
    )
    linux.sysctls.update(draw(rarely(text_map(), {})))
    sc = linux.security_context
    ns = sc.namespace_options
    ns.network, ns.pid, ns.ipc = (draw(maybe(0, st.sampled_from([1, 2, 3, -1, 99]))) for _ in "npi")
    sc.seccomp.profile_type = draw(maybe(0, st.sampled_from([1, 2, 7])))
    sc.seccomp.localhost_ref = draw(maybe("", hostile_text(huge=False)))
    if draw(RARE):
        sc.run_as_user.value = draw(I64)
    if draw(RARE):
        linux.resources.cpu_shares = draw(I64)
        linux.resources.memory_limit_in_bytes = draw(I64)
        linux.overhead.cpu_quota = draw(I64)
    return cfg


def _remove_kubelet_cgroup() -> None:
    """The cgroup a pod named as its cgroup_parent belongs to the kubelet, which removes
    it; here the test plays the kubelet."""
    for h in Path("/sys/fs/cgroup").iterdir():
        d = h / CGROUP_PARENT.lstrip("/") / MARK
        if d.is_dir():
            d.rmdir()


def test_run_pod_sandbox(probe: Prober) -> None:
    logs = probe.env.logs

    @examples(60, 2000)
    @given(pod_configs(logs), maybe("", hostile_text()), st.data())
    def prop(cfg: pb.PodSandboxConfig, handler: str, data: st.DataObject) -> None:
        try:
            resp = probe.call(
                "RunPodSandbox", pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)
            )
            if resp is not None:
                pid = resp.pod_sandbox_id
                probe.call("PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=pid))
                verbose = pb.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True)
                probe.call("PodSandboxStatus", verbose)
                probe.call("PodSandboxStats", pb.PodSandboxStatsRequest(pod_sandbox_id=pid))
                ports = data.draw(st.lists(I32, max_size=3))
                probe.call("PortForward", pb.PortForwardRequest(pod_sandbox_id=pid, port=ports))
                probe.call("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pid))
                probe.call("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pid))
        finally:
            remove_all(probe.d)
            _remove_kubelet_cgroup()
        probe.check()

    prop()
    probe.report("RunPodSandbox")
    assert probe.codes["RunPodSandbox:OK"] > 0, "no valid pod at all: the strategy is broken"


# --- containers -----------------------------------------------------------------------------


def resources(draw: st.DrawFn) -> pb.LinuxContainerResources:
    res = pb.LinuxContainerResources()
    for name in ("cpu_period", "cpu_quota", "cpu_shares", "memory_limit_in_bytes"):
        if draw(st.booleans()):
            setattr(res, name, draw(st.one_of(I64, st.sampled_from([0, -1, 2, 1 << 62]))))
    if draw(st.booleans()):
        res.oom_score_adj = draw(I64)
    if draw(st.booleans()):
        res.cpuset_cpus = draw(hostile_text(huge=False))
        res.cpuset_mems = draw(hostile_text(huge=False))
    if draw(st.booleans()):
        res.hugepage_limits.add(
            page_size=draw(hostile_text(huge=False)), limit=draw(st.integers(0, 2**64 - 1))
        )
    res.unified.update(draw(text_map()))
    if draw(st.booleans()):
        res.memory_swap_limit_in_bytes = draw(I64)
    return res


@st.composite
def mounts(draw: st.DrawFn) -> pb.Mount:
    return pb.Mount(
        container_path=draw(maybe("/data", hostile_text(huge=False))),
        host_path=draw(maybe(str(CANARY), hostile_text(huge=False))),
        readonly=draw(st.booleans()),
        propagation=draw(st.sampled_from([0, 1, 2, 9])),
        selinux_relabel=draw(st.booleans()),
        image=pb.ImageSpec(image=draw(st.sampled_from(["", "", BUSYBOX, "rel-hostile-none:1"]))),
        image_sub_path=draw(st.sampled_from(["", "bin", "../..", "/etc", f"../{MARK}"])),
    )


@st.composite
def container_configs(draw: st.DrawFn) -> pb.ContainerConfig:
    cfg = container_config("c" + uuid.uuid4().hex[:8], "sleep", "60")
    cfg.metadata.name = draw(maybe(cfg.metadata.name, hostile_text()))
    cfg.metadata.attempt = draw(maybe(0, U32))
    cfg.image.image = draw(maybe(BUSYBOX, hostile_text()))
    cfg.log_path = draw(maybe(cfg.log_path, hostile_text(huge=False)))
    cfg.working_dir = draw(maybe("", hostile_text(huge=False)))
    if draw(RARE):
        del cfg.command[:]
        cfg.command.extend(draw(st.lists(hostile_text(), min_size=1, max_size=3)))
    cfg.args.extend(draw(rarely(st.lists(hostile_text(huge=False), max_size=2), [])))
    for _ in range(draw(rarely(st.integers(1, 2), 0))):
        cfg.envs.add(key=draw(hostile_text()), value=draw(hostile_text()))
    cfg.mounts.extend(draw(rarely(st.lists(mounts(), max_size=2), [])))
    for _ in range(draw(rarely(st.just(1), 0))):
        cfg.devices.add(
            container_path=draw(hostile_text(huge=False)),
            host_path=draw(st.sampled_from(["/dev/null", "/dev/rel-hostile-none", f"{CANARY}"])),
            permissions=draw(st.sampled_from(["rwm", "", "xyz"])),
        )
    cfg.labels.update(draw(rarely(text_map(), {})))
    cfg.annotations.update(draw(rarely(text_map(), {})))
    cfg.tty, cfg.stdin, cfg.stdin_once = (draw(st.booleans()) for _ in "tsi")
    if draw(RARE):
        cfg.linux.resources.CopyFrom(resources(draw))
    sc = cfg.linux.security_context
    if draw(RARE):
        sc.run_as_user.value = draw(I64)
        sc.run_as_group.value = draw(I64)
        sc.supplemental_groups.extend(draw(st.lists(I64, max_size=2)))
    if draw(RARE):
        sc.run_as_username = draw(hostile_text(huge=False))
    sc.capabilities.add_capabilities.extend(
        draw(rarely(st.lists(hostile_text(huge=False), max_size=2), []))
    )
    sc.masked_paths.extend(draw(rarely(st.lists(hostile_text(huge=False), max_size=2), [])))
    sc.readonly_paths.extend(draw(rarely(st.lists(hostile_text(huge=False), max_size=2), [])))
    sc.seccomp.profile_type = draw(maybe(0, st.sampled_from([1, 2])))
    sc.seccomp.localhost_ref = draw(maybe("", hostile_text(huge=False)))
    ns = sc.namespace_options
    ns.pid = draw(maybe(1, st.sampled_from([0, 2, 3, 42])))
    ns.target_id = draw(maybe("", hostile_text(huge=False)))
    return cfg


def _pod(env: PodEnv) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_dir=env.logs / "hostile")
    return run_pod(env.daemon, cfg), cfg


def _remove_containers(probe: Prober, pod_id: str) -> None:
    req = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
    for c in probe.d.runtime.ListContainers(req).containers:
        probe.d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id))


def _exercise(probe: Prober, cid: str, data: st.DataObject) -> None:
    """The RPCs on a created container, with hostile arguments where they take any."""
    ask = probe.call
    ask("StartContainer", pb.StartContainerRequest(container_id=cid))
    ask("ContainerStatus", pb.ContainerStatusRequest(container_id=cid, verbose=True))
    ask("ContainerStats", pb.ContainerStatsRequest(container_id=cid))
    update = pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources(data.draw))
    ask("UpdateContainerResources", update)
    ask("ReopenContainerLog", pb.ReopenContainerLogRequest(container_id=cid))
    cmd = data.draw(st.lists(hostile_text(huge=False), max_size=3))
    timeout = data.draw(st.sampled_from([0, 1, -1, 2**62]))
    ask("ExecSync", pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=20)
    ask(
        "Exec", pb.ExecRequest(container_id=cid, cmd=cmd, stdout=True, tty=data.draw(st.booleans()))
    )
    ask("Attach", pb.AttachRequest(container_id=cid, stdout=True, stdin=data.draw(st.booleans())))
    stop = data.draw(st.sampled_from([0, -1, -(2**63), 1]))
    ask("StopContainer", pb.StopContainerRequest(container_id=cid, timeout=stop))
    ask("RemoveContainer", pb.RemoveContainerRequest(container_id=cid))


def test_create_container(probe: Prober) -> None:
    pod_id, pod_cfg = _pod(probe.env)

    @examples(80, 3000)
    @given(container_configs(), st.data())
    def prop(cfg: pb.ContainerConfig, data: st.DataObject) -> None:
        sandbox = pod_cfg if data.draw(st.booleans()) else pb.PodSandboxConfig()
        try:
            resp = probe.call(
                "CreateContainer",
                pb.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=cfg, sandbox_config=sandbox
                ),
            )
            if resp is not None:
                _exercise(probe, resp.container_id, data)
        finally:
            _remove_containers(probe, pod_id)
        probe.check()

    prop()
    probe.report("CreateContainer")
    assert probe.codes["CreateContainer:OK"] > 0, "no valid container at all"


# --- every RPC with hostile ids and filters ---------------------------------------------------


@st.composite
def id_requests(draw: st.DrawFn) -> tuple[str, Any]:
    some = hostile_text()
    id_ = draw(st.one_of(some, st.text("0123456789abcdef", max_size=70)))
    flt_labels = draw(text_map())
    image = pb.ImageSpec(image=draw(some), annotations=draw(text_map()))
    auth = pb.AuthConfig(
        username=draw(some), password=draw(some), auth=draw(some), registry_token=draw(some)
    )
    requests: list[tuple[str, Any]] = [
        ("StartContainer", pb.StartContainerRequest(container_id=id_)),
        ("StopContainer", pb.StopContainerRequest(container_id=id_, timeout=draw(I64))),
        ("RemoveContainer", pb.RemoveContainerRequest(container_id=id_)),
        ("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=id_)),
        ("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=id_)),
        ("PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=id_, verbose=True)),
        ("ContainerStatus", pb.ContainerStatusRequest(container_id=id_, verbose=True)),
        ("ContainerStats", pb.ContainerStatsRequest(container_id=id_)),
        ("PodSandboxStats", pb.PodSandboxStatsRequest(pod_sandbox_id=id_)),
        ("ReopenContainerLog", pb.ReopenContainerLogRequest(container_id=id_)),
        (
            "UpdateContainerResources",
            pb.UpdateContainerResourcesRequest(container_id=id_, annotations=flt_labels),
        ),
        ("ExecSync", pb.ExecSyncRequest(container_id=id_, cmd=[draw(some)], timeout=draw(I64))),
        ("Exec", pb.ExecRequest(container_id=id_, cmd=[draw(some)], stdout=True)),
        ("Attach", pb.AttachRequest(container_id=id_, stdin=True)),
        ("PortForward", pb.PortForwardRequest(pod_sandbox_id=id_, port=draw(st.lists(I32)))),
        (
            "ListContainers",
            pb.ListContainersRequest(
                filter=pb.ContainerFilter(
                    id=id_,
                    pod_sandbox_id=draw(some),
                    state=pb.ContainerStateValue(state=draw(st.integers(-5, 9))),
                    label_selector=flt_labels,
                )
            ),
        ),
        (
            "ListPodSandbox",
            pb.ListPodSandboxRequest(
                filter=pb.PodSandboxFilter(
                    id=id_,
                    state=pb.PodSandboxStateValue(state=draw(st.integers(-5, 9))),
                    label_selector=flt_labels,
                )
            ),
        ),
        (
            "ListContainerStats",
            pb.ListContainerStatsRequest(
                filter=pb.ContainerStatsFilter(
                    id=id_, pod_sandbox_id=id_, label_selector=flt_labels
                )
            ),
        ),
        (
            "ListPodSandboxStats",
            pb.ListPodSandboxStatsRequest(
                filter=pb.PodSandboxStatsFilter(id=id_, label_selector=flt_labels)
            ),
        ),
        ("ListImages", pb.ListImagesRequest(filter=pb.ImageFilter(image=image))),
        ("ImageStatus", pb.ImageStatusRequest(image=image, verbose=True)),
        ("RemoveImage", pb.RemoveImageRequest(image=image)),
        ("PullImage", pb.PullImageRequest(image=_local_only(image), auth=auth)),
        ("ImageFsInfo", pb.ImageFsInfoRequest()),
        (
            "UpdateRuntimeConfig",
            pb.UpdateRuntimeConfigRequest(
                runtime_config=pb.RuntimeConfig(
                    network_config=pb.NetworkConfig(pod_cidr=draw(some))
                )
            ),
        ),
        (
            "CheckpointContainer",
            pb.CheckpointContainerRequest(container_id=id_, location=draw(some)),
        ),
        ("Status", pb.StatusRequest(verbose=draw(st.booleans()))),
        ("RuntimeConfig", pb.RuntimeConfigRequest()),
        (
            "UpdatePodSandboxResources",
            pb.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=id_, resources=pb.LinuxContainerResources(cpu_shares=draw(I64))
            ),
        ),
        ("ListPodSandboxMetrics", pb.ListPodSandboxMetricsRequest()),
        ("ListMetricDescriptors", pb.ListMetricDescriptorsRequest()),
    ]
    return draw(st.sampled_from(requests))


def _local_only(image: pb.ImageSpec) -> pb.ImageSpec:
    """Pull only from a closed loopback port: a name that parses gets that host instead
    of its own, so no example ever reaches past 127.0.0.1."""
    from podling.errors import InvalidArgument
    from podling.image.reference import parse_reference

    try:
        ref = parse_reference(image.image)
    except InvalidArgument:
        return image
    tail = f"@{ref.digest}" if ref.digest else f":{ref.tag}"
    return pb.ImageSpec(image=f"127.0.0.1:9/{ref.path}{tail}")


def test_every_rpc_with_hostile_ids(probe: Prober) -> None:
    """Every RPC that takes an id, a filter or an image name, on a daemon that holds a
    pod, a running container and an image, so prefixes and filters can match."""
    pod_id, pod_cfg = _pod(probe.env)
    cfg = container_config("sleeper", "sleep", "600")
    cid = probe.d.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg)
    ).container_id
    probe.d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))

    @examples(600, 20_000)
    @given(id_requests())
    def prop(item: tuple[str, Any]) -> None:
        method, request = item
        probe.call(method, request, timeout=30)
        probe.check()

    prop()
    probe.report("hostile ids")


def test_oversized_message_is_refused_cleanly(probe: Prober) -> None:
    """A request over gRPC's 4 MiB limit is refused (RESOURCE_EXHAUSTED), not a crash."""
    cfg = pod_config()
    cfg.annotations["big"] = "x" * (5 << 20)
    with pytest.raises(grpc.RpcError) as e:
        probe.d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    probe.check()

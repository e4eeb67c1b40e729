"""The pod and container verbs of `podling` against an in-process fake CRI runtime: the
requests they send, what they print, and their one-line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cri_api.v1 import api_pb2 as pb

from podling.cli.lookup import ago, human_duration
from tests.support.fakecri import FakeCRI, invoke

POD_YAML = """\
metadata:
  name: web
  namespace: shop
  uid: u-1
  attempt: 2
log_directory: /var/log/pods/web
labels: {app: web}
linux:
  cgroup_parent: /podling-cli-unit
"""

CT_YAML = """\
metadata: {name: app}
image: {image: example.com/app:1}
command: [sh, -c, echo hi]
log_path: app.log
"""


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[FakeCRI]:
    with FakeCRI(tmp_path / "cri.sock") as fake:
        yield fake


@pytest.fixture
def configs(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "pod.yaml").write_text(POD_YAML)
    (tmp_path / "ct.yaml").write_text(CT_YAML)
    return str(tmp_path / "ct.yaml"), str(tmp_path / "pod.yaml")


def one_line_error(result: object, fragment: str) -> None:
    err = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code == 1, err  # type: ignore[attr-defined]
    assert err.count("\n") == 1 and err.startswith("podling: "), err
    assert fragment in err, err
    assert "Traceback" not in err


def columns(line: str) -> list[str]:
    return re.split(r"\s{3,}", line.strip())


def rekey(cri: FakeCRI, old: str, new: str) -> None:
    ct = cri.containers.pop(old)
    ct.id = new
    cri.containers[new] = ct


# ---- runp / create / start / run --------------------------------------------------------


def test_runp_sends_the_parsed_yaml_and_handler(cri: FakeCRI, configs: tuple[str, str]) -> None:
    result = invoke(cri, "runp", "-r", "runsc", configs[1])
    assert result.exit_code == 0, result.stderr
    (req,) = cri.requests("RunPodSandbox")
    assert result.stdout.strip() == next(iter(cri.pods))
    assert req.runtime_handler == "runsc"
    assert req.config.metadata.name == "web" and req.config.metadata.attempt == 2
    assert req.config.log_directory == "/var/log/pods/web"
    assert dict(req.config.labels) == {"app": "web"}
    assert req.config.linux.cgroup_parent == "/podling-cli-unit"


def test_runp_takes_camel_case_json(cri: FakeCRI, tmp_path: Path) -> None:
    doc = {"metadata": {"name": "j", "namespace": "n"}, "logDirectory": "/l", "dnsConfig": {}}
    (tmp_path / "pod.json").write_text(json.dumps(doc))
    result = invoke(cri, "runp", str(tmp_path / "pod.json"))
    assert result.exit_code == 0, result.stderr
    (req,) = cri.requests("RunPodSandbox")
    assert req.config.log_directory == "/l" and req.runtime_handler == ""


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "cannot read"),
        ("metadata: [unclosed", "is not valid JSON or YAML"),
        ("- a list\n", "must hold a PodSandboxConfig object, not list"),
        ("metadata: {name: x}\nbogus_field: 1\n", "bogus_field"),
        ("metadata: {attempt: many}\n", "is not a valid PodSandboxConfig"),
    ],
)
def test_runp_bad_config_names_the_file(
    cri: FakeCRI, tmp_path: Path, text: str | None, fragment: str
) -> None:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    result = invoke(cri, "runp", str(path))
    one_line_error(result, fragment)
    assert str(path) in result.stderr
    assert cri.requests("RunPodSandbox") == []


def test_create_pulls_a_missing_image_and_resolves_the_pod_prefix(
    cri: FakeCRI, configs: tuple[str, str]
) -> None:
    pod = cri.add_pod("web")
    result = invoke(cri, "create", pod[:6], *configs)
    assert result.exit_code == 0, result.stderr
    (pull,) = cri.requests("PullImage")
    assert pull.image.image == "example.com/app:1"
    assert pull.sandbox_config.metadata.name == "web"
    (req,) = cri.requests("CreateContainer")
    assert req.pod_sandbox_id == pod
    assert list(req.config.command) == ["sh", "-c", "echo hi"]
    assert req.sandbox_config.log_directory == "/var/log/pods/web"
    assert result.stdout.strip() in cri.containers
    # present now: no second pull
    assert invoke(cri, "create", pod, *configs).exit_code == 0
    assert len(cri.requests("PullImage")) == 1


def test_create_no_pull_and_unknown_pod(cri: FakeCRI, configs: tuple[str, str]) -> None:
    pod = cri.add_pod("web")
    assert invoke(cri, "create", "--no-pull", pod, *configs).exit_code == 0
    assert cri.requests("PullImage") == [] and cri.requests("ImageStatus") == []
    one_line_error(invoke(cri, "create", "ffff0000", *configs), "no such pod: ffff0000")


def test_start_prints_each_id(cri: FakeCRI) -> None:
    pod = cri.add_pod("p")
    a = cri.add_container(pod, "a", state=pb.CONTAINER_CREATED)
    result = invoke(cri, "start", a[:10])
    assert result.stdout.split() == [a]
    assert cri.containers[a].state == pb.CONTAINER_RUNNING


def test_run_is_runp_create_start(cri: FakeCRI, configs: tuple[str, str]) -> None:
    result = invoke(cri, "run", "-r", "crun", *configs)
    assert result.exit_code == 0, result.stderr
    cid = result.stdout.strip()
    assert cri.containers[cid].state == pb.CONTAINER_RUNNING
    order = [
        m
        for m in cri.methods()
        if m in ("RunPodSandbox", "PullImage", "CreateContainer", "StartContainer")
    ]
    assert order == ["RunPodSandbox", "PullImage", "CreateContainer", "StartContainer"]
    assert cri.requests("RunPodSandbox")[0].runtime_handler == "crun"
    assert cri.requests("StartContainer")[0].container_id == cid


def test_run_failure_removes_the_pod_it_ran(cri: FakeCRI, configs: tuple[str, str]) -> None:
    cri.fail_next["StartContainer"] = (pb_status("FAILED_PRECONDITION"), "no runc today")
    result = invoke(cri, "run", *configs)
    one_line_error(result, "no runc today (FAILED_PRECONDITION); removed the pod")
    assert cri.pods == {} and len(cri.requests("RemovePodSandbox")) == 1


def pb_status(name: str) -> object:
    import grpc

    return getattr(grpc.StatusCode, name)


# ---- ps ---------------------------------------------------------------------------------


@pytest.fixture
def three(cri: FakeCRI) -> dict[str, str]:
    pod = cri.add_pod("web")
    return {
        "pod": pod,
        "run": cri.add_container(pod, "nginx", labels={"tier": "front"}),
        "exited": cri.add_container(pod, "init", state=pb.CONTAINER_EXITED),
        "run2": cri.add_container(pod, "sidecar", image="sha256:" + "ab" * 32),
    }


def test_ps_default_lists_running_only(cri: FakeCRI, three: dict[str, str]) -> None:
    result = invoke(cri, "ps")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert columns(lines[0]) == [
        "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"
    ]  # fmt: skip
    (req,) = cri.requests("ListContainers")
    assert req.filter.state.state == pb.CONTAINER_RUNNING
    # newest first; ids truncated to 13; image ids shortened; pod name resolved
    assert [line.split()[0] for line in lines[1:]] == [three["run2"][:13], three["run"][:13]]
    sidecar = lines[1].split()
    assert sidecar[1] == "ab" * 6 + "a"
    assert lines[2].split()[1] == "docker.io/library/busybox:latest"
    assert columns(lines[2])[2:4] == ["Less than a second ago", "Running"]
    assert lines[2].split()[-3:] == ["0", three["pod"][:13], "web"]


def test_ps_filters_reach_the_runtime(cri: FakeCRI, three: dict[str, str]) -> None:
    assert set(invoke(cri, "ps", "-a", "-q").stdout.split()) == {
        three["run"],
        three["exited"],
        three["run2"],
    }
    assert not cri.requests("ListContainers")[-1].filter.HasField("state")
    assert invoke(cri, "ps", "--state", "exited", "-q").stdout.split() == [three["exited"]]
    assert cri.requests("ListContainers")[-1].filter.state.state == pb.CONTAINER_EXITED
    out = invoke(cri, "ps", "-a", "--label", "tier=front", "-q").stdout.split()
    assert out == [three["run"]]
    assert dict(cri.requests("ListContainers")[-1].filter.label_selector) == {"tier": "front"}
    invoke(cri, "ps", "-a", "-p", three["pod"][:8], "--id", three["run"][:5], "-q")
    flt = cri.requests("ListContainers")[-1].filter
    assert (flt.pod_sandbox_id, flt.id) == (three["pod"][:8], three["run"][:5])


def test_ps_name_regex_latest_last(cri: FakeCRI, three: dict[str, str]) -> None:
    assert invoke(cri, "ps", "-a", "--name", "^(nginx|init)$", "-q").stdout.split() == [
        three["exited"],
        three["run"],
    ]
    assert invoke(cri, "ps", "-l", "-q").stdout.split() == [three["run2"]]
    assert invoke(cri, "ps", "--last", "2", "-q").stdout.split() == [three["run2"], three["exited"]]
    one_line_error(invoke(cri, "ps", "--name", "("), "not a valid regular expression")


def test_ps_json_yaml_and_no_trunc(cri: FakeCRI, three: dict[str, str]) -> None:
    doc = json.loads(invoke(cri, "ps", "-a", "-o", "json").stdout)
    assert {c["id"] for c in doc["containers"]} == {three["run"], three["exited"], three["run2"]}
    assert doc["containers"][0]["metadata"]["name"] == "sidecar"
    assert doc["containers"][0]["podSandboxId"] == three["pod"]
    as_yaml = yaml.safe_load(invoke(cri, "ps", "-o", "yaml").stdout)
    assert [c["metadata"]["name"] for c in as_yaml["containers"]] == ["sidecar", "nginx"]
    wide = invoke(cri, "ps", "--no-trunc").stdout.splitlines()
    assert wide[1].split()[0] == three["run2"] and wide[1].split()[1] == "sha256:" + "ab" * 32
    assert invoke(cri, "ps", "--label", "noequals").exit_code == 1


# ---- pods -------------------------------------------------------------------------------


def test_pods_table_and_filters(cri: FakeCRI) -> None:
    a = cri.add_pod("alpha", "team-a", app="x")
    b = cri.add_pod("beta", "team-b")
    cri.pods[b].handler = "runsc"
    cri.pods[b].state = pb.SANDBOX_NOTREADY
    lines = invoke(cri, "pods").stdout.splitlines()
    assert columns(lines[0]) == [
        "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"
    ]  # fmt: skip
    assert lines[1].split()[0] == b[:13] and lines[1].split()[-5:] == [
        "NotReady",
        "beta",
        "team-b",
        "0",
        "runsc",
    ]
    assert lines[2].split()[-5:] == ["Ready", "alpha", "team-a", "0", "(default)"]
    assert invoke(cri, "pods", "-q", "--state", "notready").stdout.split() == [b]
    assert cri.requests("ListPodSandbox")[-1].filter.state.state == pb.SANDBOX_NOTREADY
    assert invoke(cri, "pods", "-q", "--namespace", "-a$").stdout.split() == [a]
    assert invoke(cri, "pods", "-q", "--name", "et").stdout.split() == [b]
    assert invoke(cri, "pods", "-q", "--label", "app=x").stdout.split() == [a]
    assert invoke(cri, "pods", "-q", "--id", a[:4]).stdout.split() == [a]
    assert cri.requests("ListPodSandbox")[-1].filter.id == a[:4]
    doc = json.loads(invoke(cri, "pods", "-o", "json").stdout)
    assert [p["metadata"]["name"] for p in doc["items"]] == ["beta", "alpha"]
    assert invoke(cri, "pods", "--no-trunc").stdout.splitlines()[1].split()[0] == b


def test_inspect_and_inspectp_expand_info(cri: FakeCRI, three: dict[str, str]) -> None:
    doc = json.loads(invoke(cri, "inspect", three["run"][:8]).stdout)
    assert doc["status"]["id"] == three["run"] and doc["status"]["state"] == "CONTAINER_RUNNING"
    assert doc["info"] == {"pid": 7, "sandboxID": three["pod"]}
    assert cri.requests("ContainerStatus")[-1].verbose
    poddoc = yaml.safe_load(invoke(cri, "inspectp", "-o", "yaml", three["pod"]).stdout)
    assert poddoc["status"]["metadata"]["name"] == "web" and poddoc["info"]["pid"] == 42
    one_line_error(invoke(cri, "inspect", "0000"), "no such container: 0000")


# ---- stop / rm / stopp / rmp ------------------------------------------------------------


def test_stop_sends_the_grace_period(cri: FakeCRI, three: dict[str, str]) -> None:
    result = invoke(cri, "stop", "-t", "7", three["run"][:12])
    assert result.stdout.split() == [three["run"][:12]]
    (req,) = cri.requests("StopContainer")
    assert (req.container_id, req.timeout) == (three["run"], 7)
    invoke(cri, "stop", three["run2"])
    assert cri.requests("StopContainer")[-1].timeout == 0


def test_rm_refuses_running_without_force(cri: FakeCRI, three: dict[str, str]) -> None:
    result = invoke(cri, "rm", three["exited"], three["run"])
    assert result.stdout.split() == [three["exited"]]  # the others still go
    one_line_error(result, f"container {three['run']} is running: stop it first or use rm -f")
    assert three["run"] in cri.containers and three["exited"] not in cri.containers
    assert invoke(cri, "rm", "-f", three["run"]).stdout.split() == [three["run"]]
    assert [r.container_id for r in cri.requests("StopContainer")] == [three["run"]]
    assert invoke(cri, "rm", "-a", "-f").exit_code == 0
    assert cri.containers == {}
    one_line_error(invoke(cri, "rm"), "give at least one container id, or --all")


def test_ambiguous_and_unknown_prefixes(cri: FakeCRI) -> None:
    pod = cri.add_pod("p")
    rekey(cri, cri.add_container(pod, "a"), "abc1" + "0" * 60)
    rekey(cri, cri.add_container(pod, "b"), "abc2" + "0" * 60)
    one_line_error(invoke(cri, "stop", "abc"), "'abc' matches 2 containers")
    assert cri.requests("StopContainer") == []
    assert invoke(cri, "stop", "abc2").exit_code == 0
    one_line_error(invoke(cri, "stop", "fff"), "no such container: fff")
    one_line_error(invoke(cri, "stopp", "fff"), "no such pod: fff")


def test_stopp_and_rmp(cri: FakeCRI, three: dict[str, str]) -> None:
    other = cri.add_pod("other")
    one_line_error(invoke(cri, "rmp", three["pod"]), "is ready: stop it first")
    assert invoke(cri, "stopp", three["pod"][:9]).stdout.strip() == (
        f"Stopped sandbox {three['pod']}"
    )
    assert cri.requests("StopPodSandbox")[0].pod_sandbox_id == three["pod"]
    assert invoke(cri, "rmp", three["pod"]).stdout.strip() == f"Removed sandbox {three['pod']}"
    assert invoke(cri, "rmp", "-a").exit_code == 1  # `other` is ready
    assert invoke(cri, "rmp", "-a", "-f").stdout.strip() == f"Removed sandbox {other}"
    assert cri.pods == {}


# ---- update / exec ----------------------------------------------------------------------


def test_update_sends_only_given_resources(cri: FakeCRI, three: dict[str, str]) -> None:
    args = ["--memory", "512m", "--cpu-shares", "512", "--cpu-quota", "50000"]
    args += ["--cpu-period", "100000", "--cpuset-cpus", "0-1", "--cpuset-mems", "0"]
    result = invoke(cri, "update", *args, three["run"][:7])
    assert result.stdout.split() == [three["run"]]
    (req,) = cri.requests("UpdateContainerResources")
    assert req.container_id == three["run"]
    assert req.linux == pb.LinuxContainerResources(
        memory_limit_in_bytes=512 << 20,
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
    )
    invoke(cri, "update", "--memory", "1048576", three["run"])
    assert cri.requests("UpdateContainerResources")[-1].linux == pb.LinuxContainerResources(
        memory_limit_in_bytes=1 << 20
    )
    one_line_error(invoke(cri, "update", three["run"]), "nothing to update")
    one_line_error(invoke(cri, "update", "--memory", "lots", three["run"]), "is not a size")


def test_exec_separates_streams_and_returns_the_exit_code(
    cri: FakeCRI, three: dict[str, str]
) -> None:
    def handler(req: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
        return pb.ExecSyncResponse(stdout=b"out\x00bytes\n", stderr=b"err\n", exit_code=3)

    cri.exec_handler = handler
    result = invoke(cri, "exec", "--timeout", "4", three["run"][:6], "sh", "-c", "x", "--flag")
    assert result.exit_code == 3
    assert result.stdout_bytes == b"out\x00bytes\n" and result.stderr_bytes == b"err\n"
    (req,) = cri.requests("ExecSync")
    assert list(req.cmd) == ["sh", "-c", "x", "--flag"]
    assert (req.container_id, req.timeout) == (three["run"], 4)


def test_exec_on_a_stopped_container_fails_in_one_line(cri: FakeCRI, three: dict[str, str]) -> None:
    result = invoke(cri, "exec", three["exited"], "true")
    one_line_error(result, "is not running (FAILED_PRECONDITION)")
    assert invoke(cri, "exec", three["run"], "true").exit_code == 0


# ---- stats ------------------------------------------------------------------------------


def test_stats_uses_the_runtime_rate(cri: FakeCRI, three: dict[str, str]) -> None:
    for key in ("run", "exited", "run2"):
        cri.containers[three[key]].nano_cores = 250_000_000
        cri.containers[three[key]].memory = 3_500_000
    lines = invoke(cri, "stats").stdout.splitlines()
    assert columns(lines[0]) == ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {three["run"][:13], three["run2"][:13]}  # running only
    assert rows[three["run"][:13]] == ["nginx", "25.00", "3.5MB", "4.1kB", "3"]
    assert len(cri.requests("ListContainerStats")) == 1  # a rate needs no second sample
    assert len(invoke(cri, "stats", "-a").stdout.splitlines()) == 4


def test_stats_samples_twice_without_a_rate(cri: FakeCRI, three: dict[str, str]) -> None:
    cri.containers[three["run"]].cpu_step = 100_000_000  # 0.1 s of CPU per sample
    out = invoke(cri, "stats", "-s", "0.2", "--id", three["run"][:5]).stdout.splitlines()
    assert len(out) == 2 and len(cri.requests("ListContainerStats")) == 2
    cpu = float(out[1].split()[2])
    assert 20 < cpu <= 50  # ~0.1 s over ~0.2+ s
    assert cri.requests("ListContainerStats")[0].filter.id == three["run"][:5]


def test_stats_filters_and_json(cri: FakeCRI, three: dict[str, str]) -> None:
    doc = json.loads(invoke(cri, "stats", "-o", "json", "-p", three["pod"][:5]).stdout)
    assert {s["attributes"]["id"] for s in doc["stats"]} == {three["run"], three["run2"]}
    invoke(cri, "stats", "-l", "tier=front", "-o", "yaml")
    flt = cri.requests("ListContainerStats")[-1].filter
    assert dict(flt.label_selector) == {"tier": "front"}


def test_statsp(cri: FakeCRI, three: dict[str, str]) -> None:
    cri.containers[three["run"]].memory = 2_000_000
    lines = invoke(cri, "statsp", "-s", "0").stdout.splitlines()
    assert columns(lines[0]) == ["POD", "POD ID", "CPU %", "MEM"]
    assert lines[1].split() == ["web", three["pod"][:13], "0.00", "2MB"]
    doc = json.loads(invoke(cri, "statsp", "--id", three["pod"][:4], "-o", "json").stdout)
    assert doc["stats"][0]["attributes"]["id"] == three["pod"]
    assert cri.requests("ListPodSandboxStats")[-1].filter.id == three["pod"][:4]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.3, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (3599, "59 minutes"),
        (5399, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration_like_docker(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
    assert ago(0, int(seconds * 1e9)) == text + " ago"


def test_no_runtime_says_so(tmp_path: Path) -> None:
    fake = FakeCRI(tmp_path / "absent.sock")  # never served
    from click.testing import CliRunner

    from podling.cli.client import main

    result = CliRunner().invoke(main, ["-r", fake.endpoint, "-t", "1", "ps"])
    one_line_error(result, "cannot connect to podlingd")

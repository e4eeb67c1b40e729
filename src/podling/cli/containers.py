"""Container lifecycle verbs: create, start, run, stop, rm, update, exec (crictl's flags)."""

from __future__ import annotations

import sys

import click
import grpc
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client, describe, fail
from podling.cli.lookup import client_of, ensure_image, load_config, resolve_container, resolve_pod
from podling.cli.pods import run_pod
from podling.cli.streams import exec_stream, transport_option

# ExecSync with no --timeout may run as long as the command does
EXEC_GRACE = 30.0


@click.command()
@click.argument("pod_id")
@click.argument("container_config", metavar="CONTAINER_CONFIG.json|yaml")
@click.argument("pod_config", metavar="POD_CONFIG.json|yaml")
@click.option("--no-pull", is_flag=True, help="do not pull the image when it is missing")
@click.pass_obj
def create(
    obj: dict[str, object], pod_id: str, container_config: str, pod_config: str, no_pull: bool
) -> None:
    """Create a container in pod POD_ID; prints its id. Pulls the image if it is missing."""
    config = load_config(container_config, pb.ContainerConfig())
    sandbox = load_config(pod_config, pb.PodSandboxConfig())
    with client_of(obj) as c:
        click.echo(_create(c, resolve_pod(c, pod_id), config, sandbox, no_pull))


def _create(
    c: Client, pod_id: str, config: pb.ContainerConfig, sandbox: pb.PodSandboxConfig, no_pull: bool
) -> str:
    ensure_image(c, config.image.image, sandbox, no_pull)
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox)
    return str(c.runtime.CreateContainer(req, timeout=c.timeout).container_id)


@click.command()
@click.argument("container", nargs=-1, required=True)
@click.pass_obj
def start(obj: dict[str, object], container: tuple[str, ...]) -> None:
    """Start created containers."""
    with client_of(obj) as c:
        for ref in container:
            cid = resolve_container(c, ref)
            c.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=c.timeout)
            click.echo(cid)


@click.command()
@click.argument("container_config", metavar="CONTAINER_CONFIG.json|yaml")
@click.argument("pod_config", metavar="POD_CONFIG.json|yaml")
@click.option("-r", "--runtime", default="", help="runtime handler (RuntimeClass) to use")
@click.option("--no-pull", is_flag=True, help="do not pull the image when it is missing")
@click.pass_obj
def run(
    obj: dict[str, object], container_config: str, pod_config: str, runtime: str, no_pull: bool
) -> None:
    """Run a pod, then create and start a container in it; prints the container id.
    If the container cannot be created or started, the new pod is removed again."""
    config = load_config(container_config, pb.ContainerConfig())
    sandbox = load_config(pod_config, pb.PodSandboxConfig())
    with client_of(obj) as c:
        pod_id = run_pod(c, sandbox, runtime)
        try:
            cid = _create(c, pod_id, config, sandbox, no_pull)
            c.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=c.timeout)
        except grpc.RpcError as e:
            fail(f"{describe(e)}; {_undo_pod(c, pod_id)}")
    click.echo(cid)


def _undo_pod(c: Client, pod_id: str) -> str:
    try:
        c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=c.timeout)
        req = pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        c.runtime.RemovePodSandbox(req, timeout=c.timeout)
    except grpc.RpcError as e:
        return f"the pod {pod_id} it ran is left behind ({describe(e)}): remove it with rmp -f"
    return f"removed the pod {pod_id} it ran"


@click.command()
@click.argument("container", nargs=-1, required=True)
@click.option("-t", "--timeout", "grace", default=0, help="seconds before SIGKILL")
@click.pass_obj
def stop(obj: dict[str, object], container: tuple[str, ...], grace: int) -> None:
    """Stop running containers: the stop signal, then SIGKILL after --timeout seconds."""
    with client_of(obj) as c:
        for ref in container:
            _stop(c, resolve_container(c, ref), grace)
            click.echo(ref)


def _stop(c: Client, cid: str, grace: int) -> None:
    req = pb.StopContainerRequest(container_id=cid, timeout=grace)
    c.runtime.StopContainer(req, timeout=c.timeout + grace)


@click.command()
@click.argument("container", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="stop running containers first")
@click.option("-a", "--all", "all_", is_flag=True, help="remove every container")
@click.pass_obj
def rm(obj: dict[str, object], container: tuple[str, ...], force: bool, all_: bool) -> None:
    """Remove containers. A running one needs -f (or a stop first)."""
    if not container and not all_:
        fail("give at least one container id, or --all")
    problems: list[str] = []
    with client_of(obj) as c:
        targets = [resolve_container(c, ref) for ref in container]
        if all_:
            listed = c.runtime.ListContainers(pb.ListContainersRequest(), timeout=c.timeout)
            targets += [x.id for x in listed.containers if x.id not in targets]
        for cid in targets:
            problem = _remove(c, cid, force)
            if problem:
                problems.append(problem)
            else:
                click.echo(cid)
    if problems:
        fail("; ".join(problems))


def _remove(c: Client, cid: str, force: bool) -> str | None:
    """Remove one container; a problem to report instead of stopping the whole command."""
    try:
        req = pb.ContainerStatusRequest(container_id=cid)
        state = c.runtime.ContainerStatus(req, timeout=c.timeout).status.state
        if state == pb.ContainerState.CONTAINER_RUNNING:
            if not force:
                return f"container {cid} is running: stop it first or use rm -f"
            _stop(c, cid, 0)
        c.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=c.timeout)
    except grpc.RpcError as e:
        return f"removing container {cid}: {describe(e)}"
    return None


MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """Bytes from '1048576', '512m', '1g' or '1GiB' (binary units, as docker reads them)."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = value[-1:] if value[-1:].isalpha() else ""
    number = value[: len(value) - len(unit)]
    if unit not in MEMORY_UNITS or not number.isdigit():
        fail(f"--memory {text!r} is not a size: give bytes or a number with k, m, g or t")
    return int(number) * MEMORY_UNITS[unit]


@click.command()
@click.argument("container", nargs=-1, required=True)
@click.option("--memory", default=None, help="memory limit (bytes, or 512m, 1g ...)")
@click.option("--cpu-shares", "--cpu-share", "cpu_shares", type=int, default=None)
@click.option("--cpu-quota", type=int, default=None, help="CFS quota (microseconds)")
@click.option("--cpu-period", type=int, default=None, help="CFS period (microseconds)")
@click.option("--cpuset-cpus", default=None, help="CPUs allowed, e.g. 0-1")
@click.option("--cpuset-mems", default=None, help="memory nodes allowed, e.g. 0")
@click.pass_obj
def update(
    obj: dict[str, object],
    container: tuple[str, ...],
    memory: str | None,
    cpu_shares: int | None,
    cpu_quota: int | None,
    cpu_period: int | None,
    cpuset_cpus: str | None,
    cpuset_mems: str | None,
) -> None:
    """Change the resource limits of running containers (only the given ones)."""
    res = pb.LinuxContainerResources(
        memory_limit_in_bytes=parse_memory(memory) if memory is not None else 0,
        cpu_shares=cpu_shares or 0,
        cpu_quota=cpu_quota or 0,
        cpu_period=cpu_period or 0,
        cpuset_cpus=cpuset_cpus or "",
        cpuset_mems=cpuset_mems or "",
    )
    if res == pb.LinuxContainerResources():
        fail(
            "nothing to update: give --memory, --cpu-shares, --cpu-quota, --cpu-period, "
            "--cpuset-cpus or --cpuset-mems"
        )
    with client_of(obj) as c:
        for ref in container:
            cid = resolve_container(c, ref)
            req = pb.UpdateContainerResourcesRequest(container_id=cid, linux=res)
            c.runtime.UpdateContainerResources(req, timeout=c.timeout)
            click.echo(cid)


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("container")
@click.argument("cmd", nargs=-1, required=True)
@click.option("-s", "--sync", is_flag=True, help="run synchronously (ExecSync; the default)")
@click.option("--timeout", "limit", default=0, help="kill the command after S seconds (0: none)")
@click.option("-i", "--interactive", is_flag=True, help="stream: send our stdin to the command")
@click.option("-t", "--tty", is_flag=True, help="stream: run the command on a terminal")
@transport_option
@click.pass_obj
def exec_(
    obj: dict[str, object],
    container: str,
    cmd: tuple[str, ...],
    sync: bool,
    limit: int,
    interactive: bool,
    tty: bool,
    transport: str,
) -> None:
    """Run CMD in a running container; its stdout and stderr go to ours, and its exit code
    becomes ours. With -i or -t the command streams (Exec RPC) instead of running to the
    end first (ExecSync)."""
    if (interactive or tty) and (sync or limit):
        fail("-s/--timeout run the command with ExecSync, which cannot stream: drop -i/-t")
    with client_of(obj) as c:
        cid = resolve_container(c, container)
        if interactive or tty:
            code = exec_stream(c, cid, list(cmd), stdin=interactive, tty=tty, transport=transport)
            sys.exit(code)
        req = pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=limit)
        resp = c.runtime.ExecSync(req, timeout=limit + EXEC_GRACE if limit else None)
    for stream, data in ((sys.stdout, resp.stdout), (sys.stderr, resp.stderr)):
        stream.flush()  # anything printed as text comes first
        stream.buffer.write(data)
        stream.buffer.flush()
    sys.exit(resp.exit_code)


def register(group: click.Group) -> None:
    for cmd in (create, start, run, stop, rm, update, exec_):
        group.add_command(cmd)

"""Pod verbs: runp, pods, inspectp, stopp, rmp (crictl's flags and output)."""

from __future__ import annotations

import click
import grpc
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client, describe, fail
from podling.cli.lookup import (
    ago,
    client_of,
    load_config,
    name_filter,
    newest_first,
    parse_labels,
    pod_state,
    resolve_pod,
    trunc,
)
from podling.cli.render import FORMATS, as_dict, emit, expand_info, table

POD_STATES = {
    "ready": pb.PodSandboxState.SANDBOX_READY,
    "notready": pb.PodSandboxState.SANDBOX_NOTREADY,
}


@click.command()
@click.argument("pod_config", metavar="POD_CONFIG.json|yaml")
@click.option("-r", "--runtime", default="", help="runtime handler (RuntimeClass) to use")
@click.pass_obj
def runp(obj: dict[str, object], pod_config: str, runtime: str) -> None:
    """Run a new pod sandbox from a PodSandboxConfig file; prints its id."""
    config = load_config(pod_config, pb.PodSandboxConfig())
    with client_of(obj) as c:
        click.echo(run_pod(c, config, runtime))


def run_pod(c: Client, config: pb.PodSandboxConfig, runtime: str) -> str:
    req = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime)
    return str(c.runtime.RunPodSandbox(req, timeout=c.timeout).pod_sandbox_id)


@click.command()
@click.option("--id", "pod_id", default="", help="only the pod with this id (or prefix)")
@click.option("--name", default=None, help="only pods whose name matches this regex")
@click.option("--namespace", default=None, help="only pods whose namespace matches this regex")
@click.option("-s", "--state", type=click.Choice(sorted(POD_STATES)), default=None)
@click.option("--label", multiple=True, help="KEY=VALUE selector (repeatable)")
@click.option("-l", "--latest", is_flag=True, help="only the most recently created pod")
@click.option("--last", default=0, help="only the N most recently created pods")
@click.option("-q", "--quiet", is_flag=True, help="only pod ids")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table")
@click.option("--no-trunc", is_flag=True, help="show whole ids")
@click.pass_obj
def pods(
    obj: dict[str, object],
    pod_id: str,
    name: str | None,
    namespace: str | None,
    state: str | None,
    label: tuple[str, ...],
    latest: bool,
    last: int,
    quiet: bool,
    output: str,
    no_trunc: bool,
) -> None:
    """List pod sandboxes, newest first."""
    flt = pb.PodSandboxFilter(id=pod_id, label_selector=parse_labels(label))
    if state:
        flt.state.state = POD_STATES[state]
    by_name, by_ns = name_filter(name, "--name"), name_filter(namespace, "--namespace")
    with client_of(obj) as c:
        items = c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt), timeout=c.timeout)
    found = [p for p in items.items if by_name(p.metadata.name) and by_ns(p.metadata.namespace)]
    found = newest_first(found, latest, last)
    if quiet:
        for p in found:
            click.echo(p.id)
    elif output != "table":
        emit(as_dict(pb.ListPodSandboxResponse(items=found)), output)
    else:
        _pod_table(found, no_trunc)


def _pod_table(found: list[pb.PodSandbox], no_trunc: bool) -> None:
    rows = [
        [
            trunc(p.id, no_trunc),
            ago(p.created_at),
            pod_state(p.state),
            p.metadata.name,
            p.metadata.namespace,
            str(p.metadata.attempt),
            p.runtime_handler or "(default)",
        ]
        for p in found
    ]
    table(["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"], rows)


@click.command()
@click.argument("pod", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@click.pass_obj
def inspectp(obj: dict[str, object], pod: tuple[str, ...], output: str) -> None:
    """Show the verbose status of one or more pods."""
    with client_of(obj) as c:
        for ref in pod:
            req = pb.PodSandboxStatusRequest(pod_sandbox_id=resolve_pod(c, ref), verbose=True)
            st = c.runtime.PodSandboxStatus(req, timeout=c.timeout)
            emit({"status": as_dict(st.status), **expand_info(dict(st.info))}, output)


@click.command()
@click.argument("pod", nargs=-1, required=True)
@click.pass_obj
def stopp(obj: dict[str, object], pod: tuple[str, ...]) -> None:
    """Stop pods: their containers, infra process and network."""
    with client_of(obj) as c:
        for ref in pod:
            pod_id = resolve_pod(c, ref)
            c.runtime.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=c.timeout
            )
            click.echo(f"Stopped sandbox {pod_id}")


@click.command()
@click.argument("pod", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="stop ready pods first")
@click.option("-a", "--all", "all_", is_flag=True, help="remove every pod")
@click.pass_obj
def rmp(obj: dict[str, object], pod: tuple[str, ...], force: bool, all_: bool) -> None:
    """Remove pods (and their containers). A ready pod needs -f or a stopp first."""
    if not pod and not all_:
        fail("give at least one pod id, or --all")
    problems: list[str] = []
    with client_of(obj) as c:
        targets = [resolve_pod(c, ref) for ref in pod]
        if all_:
            listed = c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=c.timeout)
            targets += [p.id for p in listed.items if p.id not in targets]
        for pod_id in targets:
            problem = _remove_pod(c, pod_id, force)
            if problem:
                problems.append(problem)
            else:
                click.echo(f"Removed sandbox {pod_id}")
    if problems:
        fail("; ".join(problems))


def _remove_pod(c: Client, pod_id: str, force: bool) -> str | None:
    """Remove one pod; a problem to report instead of stopping the whole command."""
    try:
        st = c.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=c.timeout
        ).status
        if st.state == pb.PodSandboxState.SANDBOX_READY:
            if not force:
                return f"pod {pod_id} is ready: stop it first (stopp) or use rmp -f"
            c.runtime.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=c.timeout
            )
        c.runtime.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=c.timeout
        )
    except grpc.RpcError as e:
        return f"removing pod {pod_id}: {describe(e)}"
    return None


def register(group: click.Group) -> None:
    for cmd in (runp, pods, inspectp, stopp, rmp):
        group.add_command(cmd)

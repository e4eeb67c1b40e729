"""Container listing and inspection: ps, inspect (crictl's flags and output)."""

from __future__ import annotations

import click
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client
from podling.cli.lookup import (
    ago,
    client_of,
    container_state,
    name_filter,
    newest_first,
    parse_labels,
    resolve_container,
    trunc,
)
from podling.cli.render import FORMATS, as_dict, emit, expand_info, short_id, table

CT_STATES = {
    "created": pb.ContainerState.CONTAINER_CREATED,
    "running": pb.ContainerState.CONTAINER_RUNNING,
    "exited": pb.ContainerState.CONTAINER_EXITED,
    "unknown": pb.ContainerState.CONTAINER_UNKNOWN,
}
HEADERS = ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"]


@click.command()
@click.option("-a", "--all", "all_", is_flag=True, help="every state (default: running only)")
@click.option("--id", "ct_id", default="", help="only the container with this id (or prefix)")
@click.option("-p", "--pod", default="", help="only containers of this pod id (or prefix)")
@click.option("--name", default=None, help="only containers whose name matches this regex")
@click.option("--image", default=None, help="only containers whose image matches this regex")
@click.option("-s", "--state", type=click.Choice(sorted(CT_STATES)), default=None)
@click.option("--label", multiple=True, help="KEY=VALUE selector (repeatable)")
@click.option("-l", "--latest", is_flag=True, help="only the newest container (any state)")
@click.option("-n", "--last", default=0, help="only the N newest containers (any state)")
@click.option("-q", "--quiet", is_flag=True, help="only container ids")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table")
@click.option("--no-trunc", is_flag=True, help="show whole ids")
@click.pass_obj
def ps(
    obj: dict[str, object],
    all_: bool,
    ct_id: str,
    pod: str,
    name: str | None,
    image: str | None,
    state: str | None,
    label: tuple[str, ...],
    latest: bool,
    last: int,
    quiet: bool,
    output: str,
    no_trunc: bool,
) -> None:
    """List containers, newest first."""
    flt = pb.ContainerFilter(id=ct_id, pod_sandbox_id=pod, label_selector=parse_labels(label))
    if state:
        flt.state.state = CT_STATES[state]
    elif not (all_ or latest or last):
        flt.state.state = pb.ContainerState.CONTAINER_RUNNING
    by_name, by_image = name_filter(name, "--name"), name_filter(image, "--image")
    with client_of(obj) as c:
        resp = c.runtime.ListContainers(pb.ListContainersRequest(filter=flt), timeout=c.timeout)
        found = [x for x in resp.containers if by_name(x.metadata.name) and by_image(image_of(x))]
        found = newest_first(found, latest, last)
        if quiet:
            for x in found:
                click.echo(x.id)
        elif output != "table":
            emit(as_dict(pb.ListContainersResponse(containers=found)), output)
        else:
            _ps_table(c, found, no_trunc)


def image_of(ct: pb.Container) -> str:
    """The image as the user named it, else the runtime's image reference."""
    return str(ct.image.image or ct.image_ref)


def _ps_table(c: Client, found: list[pb.Container], no_trunc: bool) -> None:
    pod_names = _pod_names(c) if found else {}
    rows = []
    for x in found:
        image = image_of(x)
        if image.startswith("sha256:") and not no_trunc:
            image = short_id(image)
        rows.append(
            [
                trunc(x.id, no_trunc),
                image,
                ago(x.created_at),
                container_state(x.state),
                x.metadata.name,
                str(x.metadata.attempt),
                trunc(x.pod_sandbox_id, no_trunc),
                pod_names.get(x.pod_sandbox_id, "unknown"),
            ]
        )
    table(HEADERS, rows)


def _pod_names(c: Client) -> dict[str, str]:
    items = c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=c.timeout).items
    return {p.id: p.metadata.name for p in items}


@click.command()
@click.argument("container", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@click.pass_obj
def inspect(obj: dict[str, object], container: tuple[str, ...], output: str) -> None:
    """Show the verbose status of one or more containers."""
    with client_of(obj) as c:
        for ref in container:
            cid = resolve_container(c, ref)
            req = pb.ContainerStatusRequest(container_id=cid, verbose=True)
            st = c.runtime.ContainerStatus(req, timeout=c.timeout)
            emit({"status": as_dict(st.status), **expand_info(dict(st.info))}, output)


def register(group: click.Group) -> None:
    for cmd in (ps, inspect):
        group.add_command(cmd)

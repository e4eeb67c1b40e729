"""`podling`: a crictl-like client for podlingd (or any CRI runtime, for the CRI verbs)."""

from __future__ import annotations

import click
from cri_api.v1 import api_pb2 as pb

from podling.cli import images as image_cmds
from podling.cli import workloads
from podling.cli.connect import connect, endpoint
from podling.cli.render import as_dict, emit, expand_info


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--runtime-endpoint",
    "-r",
    default=None,
    envvar=None,
    help="CRI socket (default: $CONTAINER_RUNTIME_ENDPOINT or unix:///run/podling/podling.sock)",
)
@click.option("--timeout", "-t", default=120.0, show_default=True, help="seconds per RPC")
@click.pass_context
def main(ctx: click.Context, runtime_endpoint: str | None, timeout: float) -> None:
    """Talk to podlingd over the CRI, as crictl does."""
    ctx.obj = {"endpoint": endpoint(runtime_endpoint), "timeout": timeout}


@main.command()
@click.pass_obj
def version(obj: dict[str, object]) -> None:
    """Runtime name and versions."""
    with connect(str(obj["endpoint"]), float(str(obj["timeout"]))) as c:
        v = c.runtime.Version(pb.VersionRequest(version="v1"), timeout=c.timeout)
    click.echo(f"Version:  {v.version}")
    click.echo(f"RuntimeName:  {v.runtime_name}")
    click.echo(f"RuntimeVersion:  {v.runtime_version}")
    click.echo(f"RuntimeApiVersion:  {v.runtime_api_version}")


@main.command()
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@click.pass_obj
def info(obj: dict[str, object], output: str) -> None:
    """Runtime status (ready conditions) and effective config."""
    with connect(str(obj["endpoint"]), float(str(obj["timeout"]))) as c:
        st = c.runtime.Status(pb.StatusRequest(verbose=True), timeout=c.timeout)
    doc = as_dict(st)
    doc.pop("info", None)
    doc.update(expand_info(dict(st.info)))
    emit(doc, output)


image_cmds.register(main)
workloads.register(main)


if __name__ == "__main__":
    main()

"""`podling migrate docker`: import every image of a Docker data root through LoadImage.

The images are read and verified here (the client runs as root beside the daemon), written
as an OCI layout into a temporary directory and loaded by the daemon from that absolute
path; the directory is removed afterwards. Exit status 1 if any image was not imported.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from podling.cli.connect import connect, fail
from podling.dockermigrate.dataroot import DockerImage, read_images
from podling.dockermigrate.layout import Outcome, write_layout
from podling.errors import PodlingError

# Loading gigabytes of layers takes far longer than an ordinary RPC.
_LOAD_TIMEOUT = 3600.0


@click.group()
def migrate() -> None:
    """Import images from another container engine."""


@migrate.command()
@click.option(
    "--root",
    "data_root",
    default="/var/lib/docker",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Docker's data root (docker info -f '{{.DockerRootDir}}')",
)
@click.option("--dry-run", is_flag=True, help="list what would be imported; change nothing")
@click.option(
    "--work-dir",
    default=None,
    type=click.Path(file_okay=False, exists=True),
    help="where to stage the OCI layout (needs room for the uncompressed layers)",
)
@click.pass_obj
def docker(obj: dict[str, object], data_root: str, dry_run: bool, work_dir: str | None) -> None:
    """Import every tagged image of a Docker (overlay2) data root, verified by diff id."""
    try:
        found = read_images(Path(data_root))
    except PodlingError as e:
        fail(e.message)
    if not found:
        click.echo(f"no tagged images in {data_root}")
        return
    if dry_run:
        _report([Outcome(i, i.problem) for i in found], "would import")
        sys.exit(1 if any(i.problem for i in found) else 0)
    with tempfile.TemporaryDirectory(prefix="podling-migrate-", dir=work_dir) as tmp:
        outcomes = write_layout(found, Path(tmp))
        if any(o.error is None for o in outcomes):
            outcomes = _load(obj, Path(tmp).resolve(), outcomes)
    _report(outcomes, "imported")
    sys.exit(1 if any(o.error for o in outcomes) else 0)


def _load(obj: dict[str, object], layout: Path, outcomes: list[Outcome]) -> list[Outcome]:
    """LoadImage the layout; images the daemon did not report back count as failed."""
    with connect(str(obj["endpoint"]), float(str(obj["timeout"]))) as c:
        resp: Any = c.admin_unary("LoadImage", {"path": os.fspath(layout)}, _LOAD_TIMEOUT)
    loaded = {str(img["id"]) for img in resp.get("images", [])}
    return [
        o
        if o.error is not None or o.image.id in loaded
        else Outcome(o.image, "the daemon did not report it as loaded")
        for o in outcomes
    ]


def _report(outcomes: list[Outcome], verb: str) -> None:
    for o in outcomes:
        status = verb if o.error is None else f"skipped: {o.error}"
        click.echo(f"{_names(o.image)} ({o.image.id}): {status}")


def _names(image: DockerImage) -> str:
    return ", ".join(image.names) or "<none>"


def register(group: click.Group) -> None:
    group.add_command(migrate)

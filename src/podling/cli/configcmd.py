"""`podling config import PATH`: a containerd config as podling TOML, on stdout or in a file.

Needs no daemon. The unmapped keys go to stderr, one line each, so stdout stays a clean
config file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from podling.cli.connect import fail
from podling.containerd_config import import_containerd
from podling.errors import ConfigError


@click.group("config")
def config_group() -> None:
    """Work with config files (no daemon needed)."""


@config_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="write the podling config here (e.g. /etc/podling/config.d/50-containerd.toml)",
)
def import_cmd(path: Path, output: Path | None) -> None:
    """Convert a containerd config.toml (version 2 or 3) to podling settings."""
    try:
        result = import_containerd(path.read_text(), path)
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{path}: cannot read the containerd config: {e}")
    except ConfigError as e:
        fail(str(e))
    header = f"# Imported from the containerd config {path} by `podling config import`.\n"
    text = header + ("\n" + result.toml if result.toml else "# (no setting mapped)\n")
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text)
        except OSError as e:
            fail(f"{output}: cannot write: {e}")
    for key, why in result.unmapped:
        print(f"podling: not imported: {key}: {why}", file=sys.stderr)


def register(group: click.Group) -> None:
    group.add_command(config_group)

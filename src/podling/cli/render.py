"""Output for the client: crictl-style tables, and json / yaml of the CRI messages."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

FORMATS = ("table", "json", "yaml")


def as_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=False)


def emit(doc: Any, fmt: str) -> None:
    """Print a document as json (indented, like crictl) or yaml."""
    if fmt == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
    else:
        click.echo(json.dumps(doc, indent=2))


def expand_info(info: dict[str, str]) -> dict[str, Any]:
    """Verbose `info` maps carry JSON strings: show them as JSON, as crictl does."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns separated by at least three spaces (crictl's tabwriter look)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        click.echo("   ".join(cells).rstrip())


def human_size(n: int) -> str:
    """Decimal units with 3 significant digits, as crictl prints image sizes."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}"
        size /= 1000
    return f"{size:.3g}TB"


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:13]


def split_repo_tag(repo_tag: str) -> tuple[str, str]:
    name, _, tag = repo_tag.rpartition(":")
    if "/" in tag or not name:
        return repo_tag, "<none>"
    return name, tag

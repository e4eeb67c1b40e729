"""The live per-layer progress display of `podling pull` (rich, on stderr).

PullImage itself is one unary RPC; the display follows the daemon's
`podling.v1.Admin/PullProgress` stream for the same reference while it runs.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from podling.cli.connect import Client


def show_progress(client: Client, image: str, pull: grpc.Future[Any]) -> None:
    """Draw one bar per layer until the pull ends; any display error is ignored (the
    pull's own result is what counts)."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[state]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, TaskID] = {}
        try:
            while not pull.done():
                for event in client.admin_stream("PullProgress", {"image": image}):
                    _update(bar, tasks, event)
                _wait(pull, 0.2)
            # a fast pull can end before the first poll: the daemon keeps the final state
            # for a few seconds, so draw it once more
            for event in client.admin_stream("PullProgress", {"image": image}):
                _update(bar, tasks, event)
        except grpc.RpcError:
            return


def _wait(future: grpc.Future[Any], seconds: float) -> None:
    with contextlib.suppress(grpc.FutureTimeoutError):
        future.exception(timeout=seconds)


def _update(bar: Progress, tasks: dict[str, TaskID], event: dict[str, Any]) -> None:
    for layer in event.get("layers", []):
        digest = str(layer["digest"])
        if digest not in tasks:
            tasks[digest] = bar.add_task(
                digest.removeprefix("sha256:")[:12], total=layer["total"], state=""
            )
        done = (
            layer["total"]
            if layer["state"] in ("exists", "downloaded", "unpacking")
            else layer["done"]
        )
        bar.update(tasks[digest], completed=done, state=layer["state"])

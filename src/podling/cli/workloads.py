"""Registers the pod and container verbs on the `podling` group."""

from __future__ import annotations

import click

from podling.cli import (
    configcmd,
    containers,
    doctor,
    logs,
    migrate,
    pods,
    portforward,
    ps,
    stats,
    streams,
)


def register(group: click.Group) -> None:
    for module in (
        pods,
        containers,
        ps,
        logs,
        stats,
        streams,
        portforward,
        doctor,
        migrate,
        configcmd,
    ):
        module.register(group)

"""Resource usage verbs: stats (containers) and statsp (pods), as crictl shows them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client
from podling.cli.lookup import client_of, parse_labels, trunc
from podling.cli.render import FORMATS, as_dict, emit, human_size, table


@click.command()
@click.argument("container", required=False, default="")
@click.option("-a", "--all", "all_", is_flag=True, help="every container (default: running)")
@click.option("--id", "ct_id", default="", help="only the container with this id (or prefix)")
@click.option("-p", "--pod", default="", help="only containers of this pod id (or prefix)")
@click.option("-l", "--label", multiple=True, help="KEY=VALUE selector (repeatable)")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table")
@click.option(
    "-s", "--seconds", default=1.0, help="CPU sampling time, if the runtime gives no rate"
)
@click.pass_obj
def stats(
    obj: dict[str, object],
    container: str,
    all_: bool,
    ct_id: str,
    pod: str,
    label: tuple[str, ...],
    output: str,
    seconds: float,
) -> None:
    """CPU, memory and writable-layer usage of containers."""
    flt = pb.ContainerStatsFilter(
        id=ct_id or container, pod_sandbox_id=pod, label_selector=parse_labels(label)
    )
    with client_of(obj) as c:
        found = _container_stats(c, flt, all_)
        if output != "table":
            emit(as_dict(pb.ListContainerStatsResponse(stats=found)), output)
            return
        cpu = cpu_percent(found, seconds, lambda: _container_stats(c, flt, all_))
    rows = [
        [
            trunc(s.attributes.id, False),
            s.attributes.metadata.name,
            f"{cpu.get(s.attributes.id, 0.0):.2f}",
            human_size(s.memory.working_set_bytes.value),
            human_size(s.writable_layer.used_bytes.value),
            str(s.writable_layer.inodes_used.value),
        ]
        for s in found
    ]
    table(["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], rows)


def _container_stats(c: Client, flt: pb.ContainerStatsFilter, all_: bool) -> list[Any]:
    req = pb.ListContainerStatsRequest(filter=flt)
    found = list(c.runtime.ListContainerStats(req, timeout=c.timeout).stats)
    if all_ or not found:
        return found
    running = pb.ContainerFilter(
        pod_sandbox_id=flt.pod_sandbox_id,
        state=pb.ContainerStateValue(state=pb.ContainerState.CONTAINER_RUNNING),
    )
    listed = c.runtime.ListContainers(pb.ListContainersRequest(filter=running), timeout=c.timeout)
    keep = {x.id for x in listed.containers}
    return [s for s in found if s.attributes.id in keep]


def cpu_percent(
    first: list[Any], seconds: float, again: Callable[[], list[Any]]
) -> dict[str, float]:
    """Id -> CPU % (100 = one core). The runtime's own rate (usage_nano_cores) when it gives
    one; otherwise two samples `seconds` apart, as crictl does."""
    if all(s.cpu.HasField("usage_nano_cores") for s in first) or seconds <= 0:
        return {s.attributes.id: s.cpu.usage_nano_cores.value / 1e7 for s in first}
    time.sleep(seconds)
    before = {s.attributes.id: s.cpu for s in first}
    out: dict[str, float] = {}
    for s in again():
        old = before.get(s.attributes.id)
        if old is None or s.cpu.timestamp <= old.timestamp:
            continue
        used = s.cpu.usage_core_nano_seconds.value - old.usage_core_nano_seconds.value
        out[s.attributes.id] = max(0, used) * 100 / (s.cpu.timestamp - old.timestamp)
    return out


@click.command()
@click.argument("pod", required=False, default="")
@click.option("--id", "pod_id", default="", help="only the pod with this id (or prefix)")
@click.option("-l", "--label", multiple=True, help="KEY=VALUE selector (repeatable)")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table")
@click.option(
    "-s", "--seconds", default=1.0, help="CPU sampling time, if the runtime gives no rate"
)
@click.pass_obj
def statsp(
    obj: dict[str, object],
    pod: str,
    pod_id: str,
    label: tuple[str, ...],
    output: str,
    seconds: float,
) -> None:
    """CPU and memory usage of pods."""
    flt = pb.PodSandboxStatsFilter(id=pod_id or pod, label_selector=parse_labels(label))
    req = pb.ListPodSandboxStatsRequest(filter=flt)
    with client_of(obj) as c:
        found = list(c.runtime.ListPodSandboxStats(req, timeout=c.timeout).stats)
        if output != "table":
            emit(as_dict(pb.ListPodSandboxStatsResponse(stats=found)), output)
            return
        as_linux = [_PodCpu(s) for s in found]

        def again() -> list[Any]:
            resp = c.runtime.ListPodSandboxStats(req, timeout=c.timeout)
            return [_PodCpu(s) for s in resp.stats]

        cpu = cpu_percent(as_linux, seconds, again)
    rows = [
        [
            s.attributes.metadata.name,
            trunc(s.attributes.id, False),
            f"{cpu.get(s.attributes.id, 0.0):.2f}",
            human_size(s.linux.memory.working_set_bytes.value),
        ]
        for s in found
    ]
    table(["POD", "POD ID", "CPU %", "MEM"], rows)


class _PodCpu:
    """A pod's stats seen with the container stats' shape (attributes, cpu), for cpu_percent."""

    def __init__(self, s: pb.PodSandboxStats) -> None:
        self.attributes = s.attributes
        self.cpu = s.linux.cpu


def register(group: click.Group) -> None:
    for cmd in (stats, statsp):
        group.add_command(cmd)

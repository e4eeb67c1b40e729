"""Shared pieces of the pod and container verbs: connecting, id prefixes, config files,
labels, state names and ages, the way crictl shows them."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from cri_api.v1 import api_pb2 as pb
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from podling.cli.connect import Client, connect, fail

M = TypeVar("M", bound=Message)
SHORT = 13  # crictl's truncated id length


def client_of(obj: dict[str, object]) -> AbstractContextManager[Client]:
    """The connection the group options name (endpoint, per-RPC timeout)."""
    return connect(str(obj["endpoint"]), float(str(obj["timeout"])))


def resolve_container(c: Client, ref: str) -> str:
    """The full id of the container `ref` names (an id or a unique prefix of one); exits
    with one line when none or several match."""
    req = pb.ListContainersRequest(filter=pb.ContainerFilter(id=ref))
    listed = c.runtime.ListContainers(req, timeout=c.timeout).containers
    ids = sorted({x.id for x in listed if x.id.startswith(ref)})

    def by_status() -> str:
        st = c.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=ref), timeout=c.timeout
        )
        return str(st.status.id)

    return _one("container", ref, ids, by_status)


def resolve_pod(c: Client, ref: str) -> str:
    """The full id of the pod `ref` names (an id or a unique prefix of one); exits with one
    line when none or several match."""
    req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=ref))
    listed = c.runtime.ListPodSandbox(req, timeout=c.timeout).items
    ids = sorted({x.id for x in listed if x.id.startswith(ref)})

    def by_status() -> str:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=ref)
        return str(c.runtime.PodSandboxStatus(req, timeout=c.timeout).status.id)

    return _one("pod", ref, ids, by_status)


def _one(kind: str, ref: str, ids: list[str], by_status: Callable[[], str]) -> str:
    if not ref:
        fail(f"give a {kind} id")
    if len(ids) > 1:
        fail(f"{kind} id prefix {ref!r} matches {len(ids)} {kind}s: give more of the id")
    if ids:
        return ids[0]
    # a runtime whose List filter wants whole ids may still resolve prefixes in Status
    try:
        found = by_status()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            fail(f"no such {kind}: {ref}")
        raise
    if not found:
        fail(f"no such {kind}: {ref}")
    return found


def load_config(path: str, message: M) -> M:
    """Fill `message` from a JSON or YAML file (camelCase or snake_case field names, as
    crictl's config files use); exits with one line naming the file and the problem."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")
    except UnicodeDecodeError:
        fail(f"{path} is not a text file: give a JSON or YAML {_kind(message)}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        fail(f"{path} is not valid JSON or YAML: {_first_line(str(e))}")
    if not isinstance(doc, dict):
        fail(f"{path} must hold a {_kind(message)} object, not {type(doc).__name__}")
    try:
        ParseDict(doc, message)
    except (ParseError, TypeError, ValueError) as e:
        fail(f"{path} is not a valid {_kind(message)}: {e}")
    return message


def _kind(message: Message) -> str:
    return message.DESCRIPTOR.name


def _first_line(text: str) -> str:
    return " ".join(text.split())


def ensure_image(c: Client, image: str, pod: pb.PodSandboxConfig, no_pull: bool) -> None:
    """Pull `image` unless the runtime has it already (or --no-pull was given)."""
    if no_pull:
        return
    req = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
    if c.images.ImageStatus(req, timeout=c.timeout).HasField("image"):
        return
    pull = pb.PullImageRequest(image=pb.ImageSpec(image=image), sandbox_config=pod)
    c.images.PullImage(pull, timeout=c.timeout)


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    """--label KEY=VALUE options as a selector map."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--label wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def name_filter(pattern: str | None, flag: str) -> Callable[[str], bool]:
    """A crictl-style regex filter (`re.search`); no pattern matches everything."""
    if not pattern:
        return lambda _: True
    try:
        rx = re.compile(pattern)
    except re.error as e:
        fail(f"{flag} {pattern!r} is not a valid regular expression: {e}")
    return lambda value: rx.search(value) is not None


def trunc(full_id: str, no_trunc: bool) -> str:
    return full_id if no_trunc else full_id[:SHORT]


def container_state(value: int) -> str:
    """CONTAINER_RUNNING -> Running, as crictl prints it."""
    name: str = pb.ContainerState.Name(pb.ContainerState.ValueType(value))
    return name.removeprefix("CONTAINER_").title()


def pod_state(value: int) -> str:
    return "Ready" if value == pb.PodSandboxState.SANDBOX_READY else "NotReady"


def ago(created_ns: int, now_ns: int | None = None) -> str:
    """'2 minutes ago': Docker's HumanDuration of the age, as crictl shows CREATED."""
    now = time.time_ns() if now_ns is None else now_ns
    return human_duration(max(0, now - created_ns) / 1e9) + " ago"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s < 60:
        return "1 second" if s == 1 else f"{s} seconds"
    minutes = s // 60
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)  # Go's math.Round: halves away from zero
    if hours == 1:
        return "About an hour"
    for limit, div, unit in ((48, 1, "hours"), (24 * 14, 24, "days"), (24 * 60, 24 * 7, "weeks")):
        if hours < limit:
            return f"{hours // div} {unit}"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{s // (3600 * 24 * 365)} years"


def newest_first(items: list[Any], latest: bool, last: int) -> list[Any]:
    """Sort by created_at, newest first; --latest keeps one, --last N keeps N."""
    items = sorted(items, key=lambda x: x.created_at, reverse=True)
    if latest:
        return items[:1]
    if last > 0:
        return items[:last]
    return items

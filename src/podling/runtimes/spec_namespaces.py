"""linux.namespaces of a container, and whether it may set its own hostname.

- network, ipc, uts: the pod's pinned namespaces (PodContext.namespaces); a kind the
  pod did not pin is the host's, so it is left out of the spec.
- mount: always a new one.
- pid, by NamespaceOption.pid: POD joins the pod's infra process' pid namespace,
  CONTAINER gets a new one, NODE is the host's, TARGET joins the target container's.
- user: not supported yet; a request for a pod user namespace is refused.
- cgroup: a new one on cgroup v2 for unprivileged containers (as containerd does);
  on v1 the host's, since runc cannot mount a v1 hierarchy view in a new one.

/proc/<pid>/ns/pid is the kernel's interface to a process' namespace, not a location
that depends on the node's setup.
"""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from podling.runtimes.spec_types import HostInfo, PodContext

_POD_KINDS = ("network", "ipc", "uts")


def _pid_namespace(
    ns: pb.NamespaceOption, pod: PodContext, target_pid: int | None
) -> dict[str, Any] | None:
    mode = ns.pid
    if mode == pb.NODE:
        return None
    if mode == pb.CONTAINER:
        return {"type": "pid"}
    if mode == pb.POD:
        if not pod.infra_pid:
            raise FailedPrecondition(
                f"pod {pod.sandbox_id} has no infra process, so its containers cannot share "
                "a pid namespace (namespace_options.pid POD); recreate the pod with a shared "
                "pid namespace or use CONTAINER"
            )
        return {"type": "pid", "path": f"/proc/{pod.infra_pid}/ns/pid"}
    if mode == pb.TARGET:
        if not target_pid:
            raise FailedPrecondition(
                f"namespace_options.target_id {ns.target_id!r}: the target container has no "
                "running process whose pid namespace could be joined"
            )
        return {"type": "pid", "path": f"/proc/{target_pid}/ns/pid"}
    raise InvalidArgument(f"namespace_options.pid: unknown mode {mode}")


def _check_userns(ns: pb.NamespaceOption) -> None:
    if not ns.HasField("userns_options"):
        return
    mode = ns.userns_options.mode
    if mode == pb.POD:
        raise FailedPrecondition(
            "user namespaces are not supported yet; run the pod without hostUsers: false"
        )
    if mode != pb.NODE:
        raise InvalidArgument("namespace_options.userns_options.mode must be POD or NODE")


def namespaces(
    sc: pb.LinuxContainerSecurityContext,
    pod: PodContext,
    target_pid: int | None,
    host: HostInfo,
) -> list[dict[str, Any]]:
    """The spec's linux.namespaces, in a stable order."""
    ns = sc.namespace_options
    _check_userns(ns)
    out: list[dict[str, Any]] = []
    pid = _pid_namespace(ns, pod, target_pid)
    if pid is not None:
        out.append(pid)
    for kind in _POD_KINDS:
        if kind in pod.namespaces:
            out.append({"type": kind, "path": pod.namespaces[kind]})
    out.append({"type": "mount"})
    if host.cgroup2 and not sc.privileged:
        out.append({"type": "cgroup"})
    return out


def own_uts(spec_namespaces: list[dict[str, Any]]) -> bool:
    """Whether the container gets a UTS namespace of its own (only then may the spec set
    a hostname: runc would otherwise overwrite the pod's or the host's)."""
    return any(n["type"] == "uts" and "path" not in n for n in spec_namespaces)

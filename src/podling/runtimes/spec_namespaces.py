"""linux.namespaces of a container, and whether it may set its own hostname.

- network, ipc, uts: the pod's pinned namespaces (PodContext.namespaces); a kind the
  pod did not pin is the host's, so it is left out of the spec.
- mount: always a new one.
- pid, by NamespaceOption.pid: POD joins the pod's infra process' pid namespace,
  CONTAINER gets a new one, NODE is the host's, TARGET joins the target container's.
- user: the pod's pinned user namespace when the pod has one (`hostUsers: false`), with
  its id mappings in linux.uidMappings/gidMappings; a container's userns_options must
  agree with its pod's.
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
from podling.sandbox.userns import UserNamespace, pod_user_namespace

# the user namespace first: the others belong to it
_POD_KINDS = ("user", "network", "ipc", "uts")


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


def user_namespace(sc: pb.LinuxContainerSecurityContext, pod: PodContext) -> UserNamespace | None:
    """The pod's user namespace, which the container joins, after checking that the
    container's userns_options (the kubelet copies the pod's) agree with it."""
    pod_userns = pod_user_namespace(pod.config)
    ns = sc.namespace_options
    field = "linux.security_context.namespace_options.userns_options"
    if ns.HasField("userns_options"):
        mode = ns.userns_options.mode
        if mode not in (pb.POD, pb.NODE):
            raise InvalidArgument(f"{field}.mode must be POD or NODE")
        if mode == pb.POD and pod_userns is None:
            raise FailedPrecondition(
                f"{field}: the container asks for the pod's user namespace, but pod "
                f"{pod.sandbox_id} shares the host's; recreate the pod with hostUsers: false"
            )
        if mode == pb.NODE and pod_userns is not None:
            raise InvalidArgument(
                f"{field}: mode NODE, but pod {pod.sandbox_id} has a user namespace of its "
                "own, which all its containers share"
            )
        theirs = pod.config.linux.security_context.namespace_options.userns_options
        if mode == pb.POD and (ns.userns_options.uids, ns.userns_options.gids) != (
            theirs.uids,
            theirs.gids,
        ):
            raise InvalidArgument(f"{field}: the mappings differ from the pod's")
    if pod_userns is not None and sc.privileged:
        raise InvalidArgument(
            "a privileged container cannot run in a pod with a user namespace of its own "
            "(hostUsers: false): drop privileged or the user namespace"
        )
    return pod_userns


def namespaces(
    sc: pb.LinuxContainerSecurityContext,
    pod: PodContext,
    target_pid: int | None,
    host: HostInfo,
) -> list[dict[str, Any]]:
    """The spec's linux.namespaces, in a stable order (the pod's user namespace among the
    pod's kinds; user_namespace() checks the container's userns_options against it)."""
    ns = sc.namespace_options
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

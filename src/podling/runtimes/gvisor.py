"""What runsc (gVisor 2022-12) needs of the OCI spec that spec.py builds for runc, and the
security settings it cannot honour, refused instead of silently dropped.

gVisor runs the container on a kernel of its own (the Sentry), so:
- the node's PID and IPC namespaces cannot be shared (hostPID, hostIPC): FailedPrecondition.
  The node's network works: runsc's --network=host uses the namespace it is started in.
- its capability library knows the capabilities up to CAP_AUDIT_READ; a newer one
  (CAP_PERFMON, CAP_BPF, CAP_CHECKPOINT_RESTORE) makes the sandbox fail to boot. Asked for
  by name it is refused; privileged and "ALL" get every capability runsc knows.
- with a read-only root it would mount a writable tmpfs on an empty /tmp the spec does not
  mount; a read-only bind of the rootfs's own /tmp keeps /tmp read-only, as under runc.
- each container is a sandbox of its own (see handlers.Handler.per_container_sandbox):
  the annotations that would join it to a pod sandbox go, and it gets the pod's hostname.
"""

from __future__ import annotations

import os
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition
from podling.runtimes.spec_security import ALL_CAPABILITIES, cap_name

# kernel order: everything up to and including CAP_AUDIT_READ (37)
KNOWN_CAPABILITIES = frozenset(ALL_CAPABILITIES[: ALL_CAPABILITIES.index("CAP_AUDIT_READ") + 1])
_SANDBOX_ANNOTATIONS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id")
_HOST_NAMESPACES = {"pid": "PID", "ipc": "IPC"}


def adapt_spec(
    handler: str, spec: dict[str, Any], config: pb.ContainerConfig, pod: pb.PodSandboxConfig
) -> None:
    """Make `spec` (built for container `config` of pod `pod`) right for runsc, in place;
    FailedPrecondition naming `handler` and the field for what gVisor cannot honour."""
    _refuse_host_namespaces(handler, spec, "gVisor")
    _capabilities(handler, spec, config)
    _readonly_tmp(spec)
    _standalone_sandbox(spec, pod)


def adapt_vm_spec(handler: str, spec: dict[str, Any], pod: pb.PodSandboxConfig) -> None:
    """The part of adapt_spec that holds for any handler whose containers each get a
    kernel of their own (the `vm` handler, podling.vmrt): no node PID/IPC namespace, a
    sandbox per container with the pod's hostname."""
    _refuse_host_namespaces(handler, spec, "a VM")
    _standalone_sandbox(spec, pod)


def check_pod(handler: str, opts: pb.NamespaceOption, what: str = "gVisor") -> None:
    """At RunPodSandbox: refuse a pod asking for the node's PID or IPC namespace, rather
    than running it and refusing each of its containers. `what` names the sandbox."""
    for kind in _HOST_NAMESPACES:
        if getattr(opts, kind) == pb.NamespaceMode.NODE:
            raise _host_namespace(handler, kind, what)


def _refuse_host_namespaces(handler: str, spec: dict[str, Any], what: str) -> None:
    own = {ns.get("type") for ns in spec.get("linux", {}).get("namespaces", [])}
    for kind in _HOST_NAMESPACES:
        if kind not in own:
            raise _host_namespace(handler, kind, what)


def _host_namespace(handler: str, kind: str, what: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"runtime handler {handler!r} ({what}) cannot share the node's "
        f"{_HOST_NAMESPACES[kind]} namespace (namespace_options.{kind} NODE): its containers "
        "run on a kernel of their own; use the runc or crun RuntimeClass for this pod"
    )


def _capabilities(handler: str, spec: dict[str, Any], config: pb.ContainerConfig) -> None:
    c = config.linux.security_context.capabilities
    named = [*c.add_capabilities, *c.add_ambient_capabilities]
    asked = {cap_name(v, "capabilities") for v in named if v.strip().upper() != "ALL"}
    unknown = sorted(asked - KNOWN_CAPABILITIES, key=ALL_CAPABILITIES.index)
    if unknown:
        raise FailedPrecondition(
            f"runtime handler {handler!r} (gVisor) does not support capabilities "
            f"{', '.join(unknown)} (capabilities.add_capabilities); remove them or use the "
            "runc or crun RuntimeClass"
        )
    sets = spec.get("process", {}).get("capabilities", {})
    for name, values in sets.items():
        sets[name] = [v for v in values if v in KNOWN_CAPABILITIES]


def _readonly_tmp(spec: dict[str, Any]) -> None:
    root = spec.get("root", {})
    if not root.get("readonly"):
        return
    if any(m.get("destination", "").rstrip("/") == "/tmp" for m in spec.get("mounts", [])):
        return
    tmp = os.path.join(root.get("path", ""), "tmp")
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        mount = {"destination": "/tmp", "type": "bind", "source": tmp, "options": ["rbind", "ro"]}
        spec.setdefault("mounts", []).append(mount)


def _standalone_sandbox(spec: dict[str, Any], pod: pb.PodSandboxConfig) -> None:
    annotations = spec.get("annotations", {})
    for key in _SANDBOX_ANNOTATIONS:
        annotations.pop(key, None)
    if pod.linux.security_context.namespace_options.network != pb.NamespaceMode.NODE:
        spec["hostname"] = pod.hostname or pod.metadata.name

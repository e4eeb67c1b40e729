"""Runtime handlers: the OCI runtimes a pod can pick with a RuntimeClass.

Built in (each offered when its binary is installed): `runc`; `crun`, run through a
small wrapper on hybrid cgroup hosts (crun 1.8 refuses a unified hierarchy that lists
controllers beside v1: the wrapper runs it in a private mount namespace with the unified
tree unmounted); `runsc` (gVisor) with the ptrace platform, the pod's network
namespace used as its host network (its own netstack does not start on our nodes), the
spec's seccomp profile enforced (--oci-seccomp) and CAP_NET_RAW left as the spec says
(--net-raw); Handler.adapt_spec fits each spec to it (runtimes/gvisor.py).
`[runtimes.NAME]` in the config adds handlers or overrides these.

Vocabulary: a handler is *configured* when it is in this registry, and *ready* when its
binary (and conmon) can be run. RunPodSandbox with an unknown handler is NOT_FOUND; with
a configured handler that is not ready, FAILED_PRECONDITION naming the cause.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.config import Config, HandlerConfig
from podling.errors import FailedPrecondition, NotFound
from podling.oslib import cgroups
from podling.paths import Paths
from podling.runtimes import gvisor
from podling.runtimes.conmon import Conmon
from podling.runtimes.oci import OciRuntime
from podling.vmrt.kernel import SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR, unavailable_reason

VMRT = "podling-vmrt"
RUNSC_ARGS = ["--platform=ptrace", "--network=host", "--oci-seccomp", "--net-raw"]
BUILTIN: dict[str, HandlerConfig] = {
    "runc": HandlerConfig(binary="runc"),
    "crun": HandlerConfig(binary="crun"),
    # --oci-seccomp: without it runsc ignores linux.seccomp; --net-raw: without it runsc
    # drops CAP_NET_RAW from every container, whatever the spec grants
    "runsc": HandlerConfig(binary="runsc", args=RUNSC_ARGS),
    # each container in a qemu guest of its own (podling.vmrt); offered only when qemu and
    # a guest kernel are installed
    "vm": HandlerConfig(binary=VMRT),
}

_CRUN_WRAPPER = """#!/bin/sh
# Written by podlingd: crun refuses a hybrid cgroup layout whose unified hierarchy lists
# controllers; run it in a private mount namespace without that hierarchy.
exec unshare -m --propagation private \
  sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"' {crun} "$@"
"""


@dataclass(frozen=True)
class Handler:
    name: str
    runtime: OciRuntime
    conmon: Conmon
    ready: bool
    reason: str  # why not ready ("" when ready)
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False
    # what runs the containers when it is not the node's kernel: "gVisor" or "a VM"
    own_kernel: str = ""

    @property
    def per_container_sandbox(self) -> bool:
        """Each container runs on a kernel of its own (gVisor, a VM), sharing the pod's
        network namespace. runsc's multi-container sandboxes would need every container's
        process to be a child of the first one's conmon, which conmon cannot wait for, so
        the CRI annotations that ask for them are left out."""
        return bool(self.own_kernel)

    def adapt_spec(
        self, spec: dict[str, Any], config: pb.ContainerConfig, pod: pb.PodSandboxConfig
    ) -> None:
        """Adjust `spec` (spec.py's, made for runc) to this handler in place; raises
        FailedPrecondition naming the handler and the field for a security setting it
        cannot honour. runc and crun need nothing; runsc and vm see runtimes/gvisor.py."""
        if self.own_kernel == "gVisor":
            gvisor.adapt_spec(self.name, spec, config, pod)
        elif self.own_kernel:
            gvisor.adapt_vm_spec(self.name, spec, pod)


def _which(binary: str) -> str | None:
    """`binary` on PATH; podling-vmrt also beside the running interpreter (a virtualenv's
    bin, which a daemon started by its full path may not have on PATH)."""
    found = shutil.which(binary)
    if found is None and binary == VMRT:
        found = shutil.which(binary, path=str(Path(sys.executable).parent))
    return found


def hybrid_cgroups(root: Path = cgroups.CGROUP_ROOT) -> bool:
    """v1 hierarchies with a unified one beside them that lists controllers."""
    controllers = root / "unified" / "cgroup.controllers"
    return controllers.exists() and bool(controllers.read_text().split())


class HandlerRegistry:
    def __init__(self, cfg: Config, paths: Paths) -> None:
        self.default = cfg.default_runtime
        self._paths = paths
        self._conmon = cfg.runtime.conmon
        configs = dict(BUILTIN)
        configs.update(cfg.runtimes)
        self._handlers: dict[str, Handler] = {}
        for name, hc in configs.items():
            explicit = name in cfg.runtimes or name == self.default
            handler = self._build(name, hc, explicit)
            if handler is not None:  # a built-in whose binary is absent is not offered
                self._handlers[name] = handler

    def _build(self, name: str, hc: HandlerConfig, explicit: bool) -> Handler | None:
        binary = _which(hc.binary) if hc.binary else None
        if binary is None and not explicit:
            return None
        root = Path(hc.root) if hc.root else self._paths.state / "runtimes" / name
        path = binary or hc.binary or name
        if binary and Path(binary).name == "crun" and hybrid_cgroups():
            path = str(self._crun_wrapper(binary))
        runtime = OciRuntime(name, path, root, hc.args)
        conmon = Conmon(runtime, self._conmon)
        reason = ""
        if binary is None:
            reason = f"runtime binary {hc.binary or '(none)'!r} of handler {name!r} not found"
        elif shutil.which(self._conmon) is None:
            reason = f"conmon binary {self._conmon!r} not found"
        vm = Path(path).name == VMRT
        if vm and not reason:
            reason = unavailable_reason(SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR)
            if reason and not explicit:
                return None
        kernel = "a VM" if vm else "gVisor" if Path(path).name == "runsc" else ""
        return Handler(
            name,
            runtime,
            conmon,
            ready=not reason,
            reason=reason,
            # runc and crun join the pod's pinned user namespace and take "rro" (measured:
            # runc 1.1.5, crun 1.8.1); runsc refuses "rro" and has its own kernel
            user_namespaces=not kernel,
            recursive_read_only_mounts=not kernel,
            own_kernel=kernel,
        )

    def _crun_wrapper(self, crun: str) -> Path:
        wrapper = self._paths.state / "runtimes" / "crun-hybrid"
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        tmp = wrapper.with_suffix(".tmp")
        tmp.write_text(_CRUN_WRAPPER.replace("{crun}", crun))
        os.chmod(tmp, 0o755)
        tmp.replace(wrapper)
        return wrapper

    def adopt(self, other: HandlerRegistry) -> None:
        """Take `other`'s default and handlers (a config reload): every component that
        holds this registry sees them from the next call on. Handler objects already
        handed out stay valid for the calls that hold them."""
        self.default = other.default
        self._conmon = other._conmon
        self._handlers = dict(other._handlers)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def all(self) -> list[Handler]:
        return [self._handlers[n] for n in self.names()]

    def get(self, name: str) -> Handler:
        """The handler `name` ("" = the default). NotFound for an unknown name,
        FailedPrecondition for one that cannot run on this node."""
        name = name or self.default
        handler = self._handlers.get(name)
        if handler is None:
            raise NotFound(
                f"runtime handler {name!r} is not configured; configured handlers: "
                f"{', '.join(self.names())}; add it as [runtimes.{name}] in the config"
            )
        if not handler.ready:
            raise FailedPrecondition(f"runtime handler {name!r} cannot run: {handler.reason}")
        return handler

    def lookup(self, name: str) -> Handler:
        """Like get() but without the readiness check: for stopping and removing pods
        that already exist (their handler may have broken since)."""
        handler = self._handlers.get(name or self.default)
        if handler is None:
            return self.get(name)  # raises NotFound with the full message
        return handler

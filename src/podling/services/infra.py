"""The pod's infra process, only for pods whose containers share one PID namespace.

It is a static init (Debian's catatonit, `-P`: pause mode) on a minimal read-only rootfs
podling makes itself, so no pause image is pulled. It runs like any container (conmon +
the OCI runtime), in the pod's network/IPC/UTS namespaces and a new PID namespace that
the pod's containers then join; it reaps their zombies as PID 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition
from podling.paths import Paths
from podling.runtimes import conmon
from podling.runtimes.handlers import HandlerRegistry
from podling.sandbox.userns import UserNamespace, pod_user_namespace
from podling.store.pods import PodRecord


def infra_spec(
    rootfs: Path,
    namespaces: dict[str, str],
    cgroup: str,
    sandbox_id: str,
    userns: UserNamespace | None = None,
) -> dict[str, Any]:
    """The infra container's config.json; with `userns` it joins the pod's user
    namespace (namespaces["user"]) with those id mappings.

    /dev is a small tmpfs of the container's own, in which runc makes the device files
    and the ptmx link: the rootfs is shared by every pod's infra, and runc writing them
    there raced between pods started at once (seen: "symlink pts/ptmx ...: file
    exists"); in a user namespace the pod's root could not write there at all."""
    ns: list[dict[str, str]] = [{"type": "pid"}, {"type": "mount"}]
    ns += [{"type": kind, "path": path} for kind, path in sorted(namespaces.items())]
    spec = _base_spec(rootfs, ns, cgroup, sandbox_id)
    if userns is not None:
        spec["linux"].update(userns.oci())
    return spec


def _base_spec(
    rootfs: Path, ns: list[dict[str, str]], cgroup: str, sandbox_id: str
) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "args": ["/catatonit", "-P"],
            "cwd": "/",
            "env": ["PATH=/"],
            "user": {"uid": 65535, "gid": 65535},
            "noNewPrivileges": True,
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted")},
        },
        "root": {"path": str(rootfs), "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "noexec", "mode=755", "size=64k"],
            },
        ],
        "linux": {
            "namespaces": ns,
            "cgroupsPath": cgroup,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
        },
        "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": sandbox_id,
        },
    }


class InfraRunner:
    def __init__(self, paths: Paths, handlers: HandlerRegistry, binary: str) -> None:
        self._paths = paths
        self._handlers = handlers
        self._binary = Path(binary)

    def _rootfs(self) -> Path:
        """The shared read-only rootfs: just the init binary (made once per boot)."""
        rootfs = self._paths.infra_rootfs
        target = rootfs / "catatonit"
        if not target.exists():
            if not self._binary.is_file():
                raise FailedPrecondition(
                    f"infra binary {self._binary} not found: install catatonit "
                    "(apt-get install catatonit) or set runtime.infra_binary"
                )
            rootfs.mkdir(parents=True, exist_ok=True)
            for d in ("proc", "dev"):
                (rootfs / d).mkdir(exist_ok=True)
            tmp = rootfs / ".catatonit.tmp"
            shutil.copy2(self._binary, tmp)
            tmp.replace(target)
        return rootfs

    async def start(self, pod: PodRecord) -> tuple[str, int]:
        """Create and start the infra container; returns (its id, its host pid)."""
        infra_id = pod.id  # like the pause container: the sandbox's id (gVisor needs it)
        bundle = self._paths.bundle(infra_id)
        bundle.mkdir(parents=True, exist_ok=True)
        cgroup = f"{pod.cgroup_parent}/{infra_id}"
        userns = pod_user_namespace(pb.PodSandboxConfig.FromString(pod.config))
        spec = infra_spec(self._rootfs(), pod.namespaces, cgroup, pod.id, userns)
        (bundle / "config.json").write_text(json.dumps(spec))
        handler = self._handlers.get(pod.runtime_handler)
        created = await handler.conmon.create(
            cid=infra_id,
            name=infra_id,
            bundle=bundle,
            log_path=bundle / "infra.log",
            exit_dir=self._paths.exits,
            socket_dir=self._paths.attach_sockets,
            terminal=False,
            stdin=False,
            stdin_once=False,
        )
        await handler.runtime.start(infra_id)
        return infra_id, created.pid

    async def remove(self, pod: PodRecord) -> None:
        """Kill and delete the infra container; nothing to do if there is none."""
        if not pod.infra_id:
            return
        runtime = self._handlers.lookup(pod.runtime_handler).runtime
        await runtime.kill(pod.infra_id, 9, all_processes=True)
        await runtime.wait_stopped(pod.infra_id, 10)
        await runtime.delete(pod.infra_id, force=True)
        await conmon.wait_gone(self._paths.bundle(pod.infra_id))
        shutil.rmtree(self._paths.bundle(pod.infra_id), ignore_errors=True)
        (self._paths.exits / pod.infra_id).unlink(missing_ok=True)

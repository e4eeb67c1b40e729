"""Shared by the test_security_*.py modules: pods on each installed runtime handler and
containers started in them with a security context, checked from inside (ExecSync).

A test module imports the fixtures `groups_image`, `handler` and `pod` from here (the
*_fixture functions); `pod` is
parametrised over every installed handler, so each test runs on runc, crun and runsc.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.images import File, build_image, busybox_rootfs_layer, layer, write_oci_archive
from tests.support.pods import container_config, pod_config, run_pod, start_container

HANDLERS = [h for h in ("runc", "crun", "runsc") if shutil.which(h)]
NODE, CONTAINER = pb.NamespaceMode.NODE, pb.NamespaceMode.CONTAINER
# The busybox test image plus an /etc/group in which app and nobody have memberships,
# and /bin/euid: a setuid-root program whose exit code is its effective uid (mod 256).
GROUPS_IMAGE = "localhost/test/secgroups:1"
GROUP = b"root:x:0:\nwheel:x:10:app\naudio:x:29:app,nobody\napp:x:1000:\nnogroup:x:65534:\n"
RUNTIME_DEFAULT = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
UNCONFINED = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)


def euid_program() -> bytes:
    """A static x86-64 ELF that exits with geteuid(): busybox drops a setuid bit itself,
    so only a program of our own shows what the kernel granted on exec."""
    code = bytes.fromhex(
        "b86b000000"  # mov eax, 107 (geteuid)
        "0f05"  # syscall
        "89c7"  # mov edi, eax
        "b83c000000"  # mov eax, 60 (exit)
        "0f05"  # syscall
    )
    base, header_size = 0x400000, 64 + 56
    size = header_size + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    elf = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, base + header_size, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return elf + program + code


@pytest.fixture(scope="module", name="groups_image")
def groups_image_fixture(env: PodEnv) -> None:
    extra = {"etc/group": GROUP, "bin/euid": File(euid_program(), 0o4755)}
    img = build_image([busybox_rootfs_layer(), layer(extra)], "gzip", {})
    archive = write_oci_archive(img, GROUPS_IMAGE, env.base / "secgroups.tar")
    call = env.daemon.channel.unary_unary(  # type: ignore[union-attr]
        "/podling.v1.Admin/LoadImage",
        request_serializer=lambda x: json.dumps(x).encode(),
        response_deserializer=json.loads,
    )
    call({"path": str(archive)})
    archive.unlink()


class Pod:
    """A pod of the module's daemon on runtime handler `handler`, and containers started
    in it with a security context."""

    def __init__(
        self, e: PodEnv, handler: str, network: int = 0, ipc: int = 0, pid: int = CONTAINER
    ) -> None:
        self.d: Daemon = e.daemon
        self.handler = handler
        self.config = pod_config(log_dir=e.logs)
        opts = self.config.linux.security_context.namespace_options
        opts.network, opts.ipc, opts.pid = network, ipc, pid  # type: ignore[assignment]
        self.id = run_pod(self.d, self.config, handler)
        self.count = 0

    @property
    def gvisor(self) -> bool:
        return self.handler == "runsc"

    def config_for(
        self, image: str, mounts: list[pb.Mount], init: str = "", **sc: Any
    ) -> pb.ContainerConfig:
        self.count += 1
        cmd = ["sh", "-c", f"{init}; exec sleep 1000"] if init else ["sleep", "1000"]
        cfg = container_config(f"c{self.count}", *cmd)
        cfg.image.image = image
        cfg.mounts.extend(mounts)
        opts = self.config.linux.security_context.namespace_options
        sc.setdefault("namespace_options", pb.NamespaceOption(**_ns(opts)))
        cfg.linux.security_context.CopyFrom(pb.LinuxContainerSecurityContext(**sc))
        return cfg

    def run(
        self, image: str = "", mounts: list[pb.Mount] | None = None, init: str = "", **sc: Any
    ) -> str:
        """Start `sleep 1000` with security context `sc` (the pod's namespace modes),
        after shell script `init` when given (run by the container's own process)."""
        cfg = self.config_for(image or GROUPS_IMAGE, mounts or [], init, **sc)
        return start_container(self.d, self.id, self.config, cfg)

    def refuse(self, **sc: Any) -> grpc.RpcError:
        """The error of CreateContainer with security context `sc` (it must fail)."""
        cfg = self.config_for(GROUPS_IMAGE, [], "", **sc)
        with pytest.raises(grpc.RpcError) as e:
            self.d.runtime.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=self.id, config=cfg)
            )
        return e.value

    def sh(self, cid: str, script: str) -> pb.ExecSyncResponse:
        req = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=20)
        return self.d.runtime.ExecSync(req)

    def out(self, cid: str, script: str) -> str:
        r = self.sh(cid, script)
        assert r.exit_code == 0, (script, r)
        return r.stdout.decode().strip()

    def wait_file(self, cid: str, path: str) -> str:
        """The contents of `path` in the container once it exists (written by `init`)."""
        deadline = time.monotonic() + 20
        while self.sh(cid, f"test -e {path}").exit_code != 0:
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.1)
        return self.out(cid, f"cat {path}")

    def status_field(self, cid: str, name: str) -> str:
        return self.out(cid, f"grep '^{name}:' /proc/self/status").split(":", 1)[1].strip()


def _ns(opts: pb.NamespaceOption) -> dict[str, int]:
    return {"network": opts.network, "ipc": opts.ipc, "pid": opts.pid}


@pytest.fixture(params=HANDLERS, name="handler")
def handler_fixture(request: pytest.FixtureRequest) -> str:
    """Each installed runtime handler in turn."""
    return str(request.param)


@pytest.fixture(name="pod")
def pod_fixture(clean: PodEnv, groups_image: None, handler: str) -> Iterator[Pod]:
    yield Pod(clean, handler)


def own_status(pid: int | str, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def daemon_pid(d: Daemon) -> int:
    assert d.proc is not None
    return d.proc.pid


def localhost(ref: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=ref)

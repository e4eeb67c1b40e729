"""The verbs of podling-vmrt, as conmon and podling's OciRuntime call them.

Errors are PodlingError subclasses whose words match what OciRuntime.classify expects of
runc: "does not exist", "not running", "not stopped", "has stopped".
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.errors import FailedPrecondition, InvalidArgument, NotFound
from podling.vmrt import launcher, net
from podling.vmrt.agent import Agent
from podling.vmrt.guest import process_script, write_guest_dir
from podling.vmrt.initramfs import initramfs_for, vmlinux_for
from podling.vmrt.kernel import find_kernel, find_qemu, unavailable_reason
from podling.vmrt.qemu import GUEST_DIR, VmConfig, memory_mb, qemu_argv
from podling.vmrt.state import Container, Record, proc_starttime

# how long `kill` waits for the agent to pass a signal on before it stops the VM instead
AGENT_SIGNAL_TIMEOUT = 3.0


@dataclass(frozen=True)
class Options:
    """The global flags."""

    root: Path
    boot_dir: Path
    modules_dir: Path
    busybox: str = "busybox"
    accel: str = "tcg"
    memory_mb: int = 0  # 0: the container's memory limit, else qemu.DEFAULT_MEMORY_MB


def _load_spec(bundle: Path) -> dict[str, Any]:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{bundle}/config.json: cannot read the OCI spec ({e})") from e
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{bundle}/config.json: not a JSON object")
    return spec


def _vm_config(opts: Options, spec: dict[str, Any], bundle: Path, gnet: Any) -> VmConfig:
    kernel, qemu = find_kernel(opts.boot_dir, opts.modules_dir), find_qemu()
    busybox = shutil.which(opts.busybox)
    if kernel is None or qemu is None or busybox is None:
        reason = unavailable_reason(opts.boot_dir, opts.modules_dir) or "busybox not found"
        raise FailedPrecondition(f"cannot boot a guest: {reason}")
    root = spec.get("root") or {}
    rootfs = Path(str(root.get("path") or "rootfs"))
    return VmConfig(
        qemu=qemu,
        accel=opts.accel,
        kernel=kernel,
        kernel_image=vmlinux_for(opts.root, kernel),
        initramfs=initramfs_for(opts.root, kernel, Path(busybox)),
        rootfs=rootfs if rootfs.is_absolute() else bundle / rootfs,
        rootfs_readonly=bool(root.get("readonly")),
        shares=[],
        net=gnet,
        memory_mb=opts.memory_mb or memory_mb(spec),
    )


def create(opts: Options, cid: str, bundle: Path, pid_file: Path, console: str | None) -> None:
    """Prepare the guest and fork the launcher, blocked until `start`."""
    if console:
        raise InvalidArgument(
            "the vm handler does not support a terminal (tty: true); run the container without one"
        )
    spec = _load_spec(bundle)
    ct = Container(opts.root, cid)
    opts.root.mkdir(parents=True, exist_ok=True)
    try:
        ct.dir.mkdir()
    except FileExistsError:
        raise FailedPrecondition(f"container {cid} already exists") from None
    try:
        _create_in(opts, ct, spec, bundle, pid_file)
    except BaseException:
        _remove(ct)
        raise


def _create_in(
    opts: Options, ct: Container, spec: dict[str, Any], bundle: Path, pid_file: Path
) -> None:
    rec = Record(ct.id, str(bundle), created=_now(), annotations=spec.get("annotations") or {})
    netns = net.network_path(spec)
    vm = _vm_config(opts, spec, bundle, None)
    gnet = net.claim(netns) if netns else None
    if gnet is not None:
        rec.netns = gnet.netns
        ct.save(rec)  # so that delete releases the claim even if the rest fails
    shares = write_guest_dir(ct.dir / GUEST_DIR, spec, vm.rootfs, gnet)
    vm = VmConfig(**{**vm.__dict__, "shares": shares, "net": gnet})
    os.mkfifo(ct.fifo, 0o600)
    argv = qemu_argv(vm)
    (ct.dir / "qemu.argv").write_text(json.dumps(argv))
    sys.stdout.flush()
    rec.pid = launcher.spawn(ct.dir, argv, gnet.netns if gnet else "")
    rec.starttime = proc_starttime(rec.pid) or 0
    ct.save(rec)
    pid_file.write_text(str(rec.pid))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def start(opts: Options, cid: str) -> None:
    ct = Container(opts.root, cid)
    rec = ct.load()
    status = ct.status(rec)
    if status != "created":
        raise FailedPrecondition(
            f"cannot start container {cid}: it is {status}, not in created state"
        )
    fd = os.open(ct.fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
    ct.started.touch()


def state(opts: Options, cid: str) -> dict[str, Any]:
    return Container(opts.root, cid).oci_state()


def parse_signal(text: str) -> int:
    name = text.upper().removeprefix("SIG")
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}") from None


def kill(opts: Options, cid: str, signum: int) -> None:
    """SIGKILL stops the VM at once; other signals go to the container's process through
    the agent; SIGTERM/SIGINT/SIGHUP that the agent cannot deliver (the guest is still
    booting, or hung) stop the VM instead."""
    ct = Container(opts.root, cid)
    rec = ct.load()
    status = ct.status(rec)
    if status == "stopped":
        raise FailedPrecondition(f"container {cid} is not running")
    if status == "running" and signum != signal.SIGKILL:
        with contextlib.suppress(Exception):
            if Agent(ct.dir).signal(signum, AGENT_SIGNAL_TIMEOUT):
                return
        if signum not in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            raise FailedPrecondition(f"container {cid}: the guest agent is not answering")
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signum)


def delete(opts: Options, cid: str, force: bool) -> None:
    ct = Container(opts.root, cid)
    rec = ct.load()
    if ct.alive(rec):
        if not force:
            raise FailedPrecondition(f"cannot delete container {cid} that is not stopped")
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while ct.alive(rec) and time.monotonic() < deadline:
            time.sleep(0.02)
    _remove(ct)


def _remove(ct: Container) -> None:
    with contextlib.suppress(NotFound):
        rec = ct.load()
        if rec.netns and os.path.exists(rec.netns):
            net.release(rec.netns)
    shutil.rmtree(ct.dir, ignore_errors=True)


def exec_process(opts: Options, cid: str, process_file: Path, pid_file: Path) -> None:
    """conmon's `exec --detach`: fork a process that runs `process_file` in the guest
    through the agent, writes its output to our stdout/stderr and exits with its code."""
    ct = Container(opts.root, cid)
    if ct.status(ct.load()) != "running":
        raise FailedPrecondition(f"cannot exec in container {cid}: it is not running")
    try:
        process = json.loads(process_file.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{process_file}: cannot read the process ({e})") from e
    if process.get("terminal"):
        raise InvalidArgument("the vm handler does not support exec with a terminal")
    script = process_script(process)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os._exit(_exec_child(ct, script))
    pid_file.write_text(str(pid))


def _exec_child(ct: Container, script: str) -> int:
    try:
        code, out, err = Agent(ct.dir).exec(script)
    except Exception as e:
        os.write(2, f"podling-vmrt exec: {e}\n".encode())
        return 255
    for fd, data in ((1, out), (2, err)):
        while data:
            data = data[os.write(fd, data) :]
    return code

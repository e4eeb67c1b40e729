"""The qemu command line for one container's guest.

Paths inside the state dir are relative: the launcher runs qemu with the state dir as its
cwd, which keeps the agent socket's path short whatever the state dir (sockaddr_un holds
107 bytes). The guest's stdout/stderr ports write to the launcher's fds 1 and 2 (conmon's
pipes); the kernel console goes to console.log, so kernel messages never reach the
container log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.vmrt.guest import Share
from podling.vmrt.kernel import GuestKernel
from podling.vmrt.net import GuestNet

DEFAULT_MEMORY_MB = 256
MIN_MEMORY_MB = 128
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init i8042.noaux i8042.nokbd tsc=reliable"
)
GUEST_DIR = "guest"  # the vmrt-cfg share, in the state dir
AGENT_SOCKET = "agent.sock"
CONSOLE_LOG = "console.log"
TCG_TB_MB = 64


@dataclass(frozen=True)
class VmConfig:
    qemu: str
    accel: str
    kernel: GuestKernel
    kernel_image: Path  # what -kernel loads: the unpacked ELF (initramfs.vmlinux_for)
    initramfs: Path
    rootfs: Path
    rootfs_readonly: bool
    shares: list[Share]
    net: GuestNet | None
    memory_mb: int


def memory_mb(spec: dict[str, Any], default: int = DEFAULT_MEMORY_MB) -> int:
    """Guest RAM: the container's memory limit (at least MIN_MEMORY_MB), else `default`."""
    limit = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    if isinstance(limit, int) and limit > 0:
        return max(MIN_MEMORY_MB, limit // (1 << 20))
    return default


def _esc(path: Path | str) -> str:
    return str(path).replace(",", ",,")  # qemu option syntax doubles commas


def _fsdev(i: int, tag: str, path: Path | str, readonly: bool) -> list[str]:
    ro = ",readonly=on" if readonly else ""
    return [
        "-fsdev", f"local,id=fs{i},path={_esc(path)},security_model=passthrough{ro}",
        "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={tag}",
    ]  # fmt: skip


def _ports() -> list[str]:
    args = ["-device", "virtio-serial-pci,id=vs0"]
    for name, fd in (("stdout", 1), ("stderr", 2)):
        args += ["-chardev", f"file,id={name},path=/proc/self/fd/{fd},append=on"]
        args += ["-device", f"virtserialport,chardev={name},name={name}"]
    args += ["-chardev", f"socket,id=agent,path={AGENT_SOCKET},server=on,wait=off"]
    args += ["-device", "virtserialport,chardev=agent,name=agent"]
    return args


def _nic(net: GuestNet | None) -> list[str]:
    if net is None:
        return []
    return [
        "-netdev", f"tap,id=n0,ifname={net.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={net.mac}",
    ]  # fmt: skip


def _accel(accel: str) -> list[str]:
    """-accel options, first choice first; TCG's translation cache is capped at TCG_TB_MB
    (qemu's default of 1 GiB would dominate a small guest's memory)."""
    out: list[str] = []
    for name in accel.split(":"):
        out += ["-accel", f"tcg,tb-size={TCG_TB_MB}" if name == "tcg" else name]
    return out


def qemu_argv(vm: VmConfig) -> list[str]:
    """argv of qemu-system-x86_64 for `vm` (run with the state dir as cwd)."""
    args = [vm.qemu, "-machine", "pc", *_accel(vm.accel), "-m", str(vm.memory_mb)]
    args += ["-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    args += ["-kernel", str(vm.kernel_image), "-initrd", str(vm.initramfs)]
    args += ["-append", KERNEL_ARGS, "-serial", f"file:{CONSOLE_LOG}"]
    args += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    args += _fsdev(0, "vmrt-cfg", GUEST_DIR, False)
    args += _fsdev(1, "vmrt-rootfs", vm.rootfs, vm.rootfs_readonly)
    for i, share in enumerate(vm.shares, start=2):
        args += _fsdev(i, share.tag, share.path, share.readonly)
    return args + _ports() + _nic(vm.net)

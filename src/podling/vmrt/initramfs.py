"""Build the guest's initramfs once per kernel: busybox (static), /init and the kernel
modules the guest needs, as an uncompressed newc cpio archive."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import lzma
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

from podling.errors import FailedPrecondition
from podling.vmrt.guest_init import INIT
from podling.vmrt.kernel import GuestKernel, load_order

_TRAILER = "TRAILER!!!"


class Cpio:
    """A newc ("070701") archive written to a binary file, entry by entry."""

    def __init__(self, out: list[bytes]) -> None:
        self._out = out
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._out.append(header + encoded + _pad(len(header) + len(encoded)))
        self._out.append(data + _pad(len(data)))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def close(self) -> None:
        self._entry(_TRAILER, 0, b"")


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _module_bytes(path: Path) -> bytes:
    """A module file, decompressed (busybox insmod takes plain .ko only)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    return data


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split() if a and "/" not in a and a != "busybox"]


def build_archive(kernel: GuestKernel, busybox: Path) -> bytes:
    """The initramfs for `kernel` as bytes."""
    chunks: list[bytes] = []
    cpio = Cpio(chunks)
    for d in ("bin", "dev", "proc", "sys", "run", "cfg", "ct", "lib", "lib/modules"):
        cpio.dir(d)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _applets(busybox):
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", INIT.encode(), 0o755)
    order = load_order(kernel.modules_dir)
    names = []
    for i, rel in enumerate(order):
        name = f"{i:02d}-{Path(rel).name.split('.ko')[0]}.ko"
        cpio.file(f"lib/modules/{name}", _module_bytes(kernel.modules_dir / rel))
        names.append(name)
    cpio.file("modules.order", "".join(f"{n}\n" for n in names).encode())
    cpio.close()
    return b"".join(chunks)


def _check_static(busybox: Path) -> None:
    head = busybox.read_bytes()[:8192]
    if b"ld-linux" in head:
        raise FailedPrecondition(
            f"{busybox} is linked dynamically; the guest needs a static busybox "
            "(install busybox-static)"
        )


def initramfs_for(root: Path, kernel: GuestKernel, busybox: Path) -> Path:
    """ROOT/initramfs-VERSION-HASH.cpio, built on first use (under a lock, written to a
    temp file and renamed, so concurrent creates share one build)."""
    tag = hashlib.sha256(INIT.encode() + str(busybox.stat().st_size).encode()).hexdigest()[:12]
    dest = root / f"initramfs-{kernel.version}-{tag}.cpio"
    if dest.exists():
        return dest
    _check_static(busybox)
    with _locked(root / "initramfs.lock"):
        if not dest.exists():
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(build_archive(kernel, busybox))
            tmp.replace(dest)
    return dest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def vmlinux_for(root: Path, kernel: GuestKernel) -> Path:
    """ROOT/vmlinux-VERSION: the kernel ELF unpacked from its bzImage, built on first use.

    qemu boots an ELF kernel through its PVH entry point, skipping the real-mode set-up
    and the in-guest decompression, which under TCG take most of the boot (measured:
    ~12 s of ~21 s for Debian's xz-packed 6.1 kernel). The bzImage is returned when no
    known compressed payload is found in it.
    """
    dest = root / f"vmlinux-{kernel.version}"
    if dest.exists():
        return dest
    data = kernel.image.read_bytes()
    elf = _unpack_payload(data)
    if elf is None:
        return kernel.image
    with _locked(root / "initramfs.lock"):
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(elf)
        tmp.replace(dest)
    return dest


def _xz(b: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(b)


def _zstd(b: bytes) -> bytes:
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(b))


def _gzip(b: bytes) -> bytes:
    return zlib.decompressobj(31).decompress(b)


_PAYLOADS = ((b"\xfd7zXZ\x00", _xz), (b"\x28\xb5\x2f\xfd", _zstd), (b"\x1f\x8b\x08\x00", _gzip))


def _unpack_payload(data: bytes) -> bytes | None:
    for magic, unpack in _PAYLOADS:
        at = data.find(magic)
        while at >= 0:
            with contextlib.suppress(Exception):
                out = unpack(data[at:])
                if out.startswith(b"\x7fELF"):
                    return out
            at = data.find(magic, at + 1)
    return None

"""Finding what a guest needs on the node: qemu and a kernel whose modules can drive
virtio-9p, virtio-net and virtio-console.

The system locations are defaults the callers pass in (the CLI's --boot-dir and
--modules-dir); nothing here reads them on its own.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SYSTEM_BOOT_DIR = Path("/boot")
SYSTEM_MODULES_DIR = Path("/lib/modules")
QEMU = "qemu-system-x86_64"

# What the guest init loads (or finds built in): PCI virtio transport, the console ports
# (stdout/stderr/agent), the NIC and the 9p filesystem over virtio.
REQUIRED_MODULES = ("virtio_pci", "virtio_console", "virtio_net", "9pnet_virtio", "9p")
_KO = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


@dataclass(frozen=True)
class GuestKernel:
    version: str
    image: Path  # the bzImage (vmlinuz-VERSION)
    modules_dir: Path  # MODULES/VERSION, with modules.dep


def module_name(path: str) -> str:
    """`kernel/fs/9p/9p.ko.xz` -> `9p`; dashes and underscores are the same to modprobe."""
    return _KO.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def _version_key(version: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", version)]


def find_kernel(boot_dir: Path, modules_root: Path) -> GuestKernel | None:
    """The newest `boot_dir/vmlinuz-*` whose modules can provide REQUIRED_MODULES
    (as modules or built in); None when there is none."""
    found = []
    for image in boot_dir.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        mods = modules_root / version
        if image.is_file() and not missing_modules(mods):
            found.append(GuestKernel(version, image, mods))
    found.sort(key=lambda k: _version_key(k.version))
    return found[-1] if found else None


def missing_modules(modules_dir: Path) -> list[str]:
    """REQUIRED_MODULES that `modules_dir` neither has nor lists as built in."""
    try:
        dep = (modules_dir / "modules.dep").read_text()
    except OSError:
        return list(REQUIRED_MODULES)
    have = {module_name(line.split(":", 1)[0]) for line in dep.splitlines() if ":" in line}
    builtin = modules_dir / "modules.builtin"
    if builtin.exists():
        have |= {module_name(line) for line in builtin.read_text().split()}
    return [m for m in REQUIRED_MODULES if m not in have]


def load_order(modules_dir: Path, wanted: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """Paths (relative to `modules_dir`) of `wanted` and everything they depend on, each
    after its dependencies, from modules.dep; built-in modules are left out."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            deps[module_name(path)] = (path, rest.split())
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in deps or deps[name][0] in order:
            return
        path, needs = deps[name]
        for dep in reversed(needs):  # modules.dep lists the deepest dependency last
            visit(module_name(dep))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def find_qemu() -> str | None:
    return shutil.which(QEMU)


def unavailable_reason(boot_dir: Path, modules_root: Path) -> str:
    """Why a VM guest cannot run here ("" when it can)."""
    if find_qemu() is None:
        return f"{QEMU} not found (install the qemu-system-x86 package)"
    if find_kernel(boot_dir, modules_root) is None:
        return (
            f"no guest kernel in {boot_dir} with modules for {', '.join(REQUIRED_MODULES)} "
            f"under {modules_root} (install linux-image-amd64)"
        )
    return ""

"""A pod's network, IPC and UTS namespaces, pinned as bind-mounted files.

Vocabulary: to *pin* a namespace is to bind-mount its /proc/<pid>/ns/<kind> file onto a
plain file, so the namespace outlives every process in it; runc joins it through that
path ({"type": "network", "path": ...}) and CNI plugins enter it by the same path. To
*unpin* is to unmount and delete that file; the kernel frees the namespace when the last
process in it is gone.

Lifecycle: pin_namespaces() has a throwaway thread of the daemon unshare the requested
namespaces (ns_thread.py), set the hostname and sysctls inside them, and bind-mount its own
namespace files onto <dir>/net, <dir>/ipc, <dir>/uts; a pod with a user namespace has a
child process (unshare(1)) do the same, as a multi-threaded process cannot make one. The
mount namespace is never unshared, so those binds land in the daemon's (the host's) mount
namespace. unpin() is idempotent.

Mount propagation: <dir> is made a mount point of its own (a bind of itself), first
private (it leaves any shared peer group of its parent, so the pins are not copied to
the parent's peers, e.g. another bind of the state dir) and then shared in a new peer
group of its own (so a mount namespace cloned later, e.g. by a tool that unshares, sees
our unmount and does not keep a dead pod's namespace alive). unpin() removes that bind
again. <dir> must be dedicated to the namespace files: nothing else should be mounted
under it.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from podling.errors import AlreadyExists, Internal, InvalidArgument
from podling.oslib import ns
from podling.sandbox.ns_thread import pin_in_thread, run_in_namespace
from podling.sandbox.userns import UserNamespace

_IPC_SYSCTLS = ("kernel.sem",)
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_HOST_NAME_MAX = 64
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class PinnedNamespaces:
    """Paths of the pinned namespace files; None for a namespace shared with the host."""

    net: Path | None
    ipc: Path | None
    uts: Path | None
    user: Path | None = None  # only for a pod with a user namespace of its own

    def paths(self) -> dict[str, str]:
        """OCI namespace type -> path, for the pinned ones: {"network": ..., "ipc": ...}."""
        found = {"network": self.net, "ipc": self.ipc, "uts": self.uts, "user": self.user}
        return {kind: str(p) for kind, p in found.items() if p is not None}

    def files(self) -> list[Path]:
        return [p for p in (self.net, self.ipc, self.uts, self.user) if p is not None]


# --- sysctls -------------------------------------------------------------------------


def _sysctl_parts(name: str) -> list[str]:
    """The /proc/sys path components of a sysctl name, in dotted or slashed form.

    As in Kubernetes, a name containing "/" is slash-separated, so dots in it are literal
    (net/ipv4/conf/eth0.100/rp_filter); otherwise dots separate the components."""
    parts = name.split("/") if "/" in name else name.split(".")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"sysctl name {name!r} is malformed")
    return parts


def _canonical(name: str) -> str:
    return ".".join(_sysctl_parts(name))


def check_sysctls(sysctls: Mapping[str, str], *, net: bool, ipc: bool) -> None:
    """Refuse sysctls the pod cannot set in its own namespaces, before anything is created.

    `net` / `ipc`: whether the pod gets its own network / IPC namespace. net.* needs the
    former; kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* the latter; every other
    sysctl is host-wide and refused. Raises InvalidArgument naming the sysctl and why."""
    for name, value in sysctls.items():
        canon = _canonical(name)
        if "\n" in value or not value.strip():
            raise InvalidArgument(f"sysctl {name}: value {value!r} is empty or multi-line")
        if canon.startswith("net."):
            if not net:
                raise InvalidArgument(
                    f"sysctl {name} needs the pod's own network namespace "
                    "(hostNetwork is set): remove it or the host network setting"
                )
        elif canon in _IPC_SYSCTLS or canon.startswith(_IPC_PREFIXES):
            if not ipc:
                raise InvalidArgument(
                    f"sysctl {name} needs the pod's own IPC namespace "
                    "(hostIPC is set): remove it or the host IPC setting"
                )
        else:
            raise InvalidArgument(
                f"sysctl {name} is not namespaced: a pod may only set net.*, kernel.shm*, "
                "kernel.msg*, kernel.sem and fs.mqueue.* sysctls"
            )


# --- mount points --------------------------------------------------------------------
# Asked per pod start and stop, so answered per path (fdinfo, stat, readdir of one small
# directory) and not from /proc/self/mountinfo, whose size grows with every pod on the
# node: at ~500 mounts, reading and parsing it took 1.7 ms (docs/performance.md, 20).


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mount_points() -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [_unescape(line.split()[4]) for line in lines]


def _mount_id(path: Path) -> int:
    """The id of the mount `path` lies on (as in mountinfo's first field)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "mnt_id":
                return int(value)
    finally:
        os.close(fd)
    raise Internal(f"the kernel names no mount id for {path}")  # fdinfo has had it since 3.15


def _is_mount_point(dir: Path) -> bool:
    return _mount_id(dir) != _mount_id(dir.parent)


def _is_self_bind(dir: Path) -> bool:
    """Whether `dir` is a mount point holding a bind of `dir` itself (the one we make):
    the same filesystem as its parent, and the same inode as the directory it covers
    (readdir of the parent names the covered one). A dir that is gone is not."""
    try:
        if not _is_mount_point(dir):
            return False
    except FileNotFoundError:
        return False
    top, parent = os.stat(dir), os.stat(dir.parent)
    if top.st_dev != parent.st_dev:
        return False
    with os.scandir(dir.parent) as entries:
        covered = next((e.inode() for e in entries if e.name == dir.name), None)
    return covered == top.st_ino


def _own_mount(dir: Path) -> None:
    """Make `dir` a mount point in a peer group of its own (see the module docstring)."""
    if _is_mount_point(dir):
        return  # already a mount point: ours from an earlier pin, or the caller's
    target = str(dir)
    ns.mount(target, target, None, ns.MS_BIND | ns.MS_REC, None)
    try:
        ns.mount(None, target, None, ns.MS_PRIVATE, None)
        ns.mount(None, target, None, ns.MS_SHARED, None)
    except OSError:
        ns.umount2(target, ns.MNT_DETACH)
        raise


def _release_dir(dir: Path) -> None:
    """Remove our bind of `dir` onto itself once nothing else is mounted under it."""
    dir = Path(os.path.realpath(dir))
    if not _is_self_bind(dir):
        return
    try:
        # without MNT_DETACH the kernel refuses (EBUSY) while anything is mounted under
        # dir, which must stay visible; then mountinfo tells that case from an open file
        ns.umount2(str(dir), 0)
        return
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):
            return  # not mounted (any more)
        if e.errno != errno.EBUSY:
            raise Internal(f"unmounting {dir}: {e.strerror}") from e
    if any(point.startswith(f"{dir}/") for point in _mount_points()):
        return  # something else still lives there; detaching would hide it
    _umount(dir)


def _umount(path: Path) -> None:
    try:
        ns.umount2(str(path), ns.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise Internal(f"unmounting {path}: {e.strerror}") from e


# --- pin / unpin ---------------------------------------------------------------------


def _check_hostname(hostname: str) -> None:
    raw = hostname.encode()
    if not raw or len(raw) > _HOST_NAME_MAX or any(c in hostname for c in "\0\n/ "):
        raise InvalidArgument(
            f"hostname {hostname!r} is invalid: it needs 1 to {_HOST_NAME_MAX} bytes "
            "without spaces, slashes or newlines"
        )


def pin_namespaces(
    dir: Path,
    *,
    net: bool,
    ipc: bool,
    uts: bool,
    hostname: str | None,
    sysctls: Mapping[str, str],
    userns: UserNamespace | None = None,
) -> PinnedNamespaces:
    """Create the requested namespaces and pin them as <dir>/net, <dir>/ipc, <dir>/uts.

    `hostname` is set in the new UTS namespace (ignored without `uts`: the host's is
    shared). `sysctls` are written inside the new namespaces (checked first with
    check_sysctls). A new network namespace gets "lo" up. With `userns`, a user
    namespace with those mappings is made first and pinned as <dir>/user; the other new
    namespaces belong to it, so the pod's root can administer them. Blocks for a fork +
    wait (a few ms): call it off the event loop.
    Raises InvalidArgument (bad sysctl or hostname), AlreadyExists (a pin file exists:
    unpin first), Internal. On any failure nothing is left pinned."""
    check_sysctls(sysctls, net=net, ipc=ipc)
    if uts and hostname is not None:
        _check_hostname(hostname)
    dir = Path(os.path.realpath(dir))
    wanted = {"net": net, "ipc": ipc, "uts": uts, "user": userns is not None}
    kinds = [k for k, on in wanted.items() if on]
    pinned = PinnedNamespaces(*(dir / k if on else None for k, on in wanted.items()))
    if not kinds:
        return pinned
    dir.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        _own_mount(dir)
        for kind in kinds:
            _create_empty(dir / kind)
            created.append(dir / kind)
        if userns is None:
            # no process at all: a thread of ours unshares (~0.3 ms, against ~5 ms for a
            # child process); lo is set up there, as CNI's loopback plugin would
            paths = {name: ("/".join(_sysctl_parts(name)), v) for name, v in sysctls.items()}
            pin_in_thread(dir, kinds, hostname if uts else None, paths)
        else:
            _pin_in_child(dir, kinds, hostname if uts else None, sysctls, userns)
            if net:
                run_in_namespace(dir / "net", ns.CLONE_NEWNET, lambda: ns.link_up("lo"))
    except BaseException:
        _unpin_files(created)
        _release_dir(dir)
        raise
    return pinned


def _create_empty(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except FileExistsError:
        raise AlreadyExists(
            f"namespace file {path} already exists: the pod's namespaces are pinned "
            "(unpin them first)"
        ) from None


# The child that creates the namespaces is util-linux's unshare(1), not a forked copy of
# the daemon: fork() of a multi-threaded Python process (grpc's threads) can crash in the
# child (seen here: SIGSEGV), while fork+exec is safe. The shell it runs says "ready" once
# the namespaces exist and waits; the daemon writes the user namespace's id maps (unshare
# has no way to without newuidmap), bind-mounts /proc/<pid>/ns/<kind> onto each file (its
# own --net=FILE binding fails with EPERM once a user namespace is involved, measured),
# then says "go", and the shell sets the hostname and sysctls inside and exits.
_SETUP = r"""
set -u
echo ready
read go || exit 5
if [ -n "$1" ]; then printf %s "$1" > /proc/sys/kernel/hostname || exit 4; fi
shift
while [ $# -ge 3 ]; do
  if [ ! -e "/proc/sys/$2" ]; then echo "sysctl $1 does not exist on this kernel"; exit 3; fi
  if ! printf %s "$3" 2>/dev/null > "/proc/sys/$2"; then
    echo "sysctl $1: the kernel refused $3"; exit 3
  fi
  shift 3
done
"""
_UNSHARE_FLAG = {"net": "--net", "ipc": "--ipc", "uts": "--uts", "user": "--user"}


def _pin_in_child(
    dir: Path,
    kinds: list[str],
    hostname: str | None,
    sysctls: Mapping[str, str],
    userns: UserNamespace | None,
) -> None:
    args = ["unshare", *(_UNSHARE_FLAG[k] for k in kinds), "--"]
    args += ["/bin/sh", "-c", _SETUP, "pin", hostname or ""]
    for name, value in sysctls.items():
        args += [name, "/".join(_sysctl_parts(name)), value]
    what = f"pinning the pod's namespaces in {dir}"
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as e:
        raise Internal(f"{what}: {e}") from e
    with proc:
        try:
            _bind_from(proc, dir, kinds, userns, what)
            out, err = proc.communicate("go\n", timeout=30)
        except BaseException:
            proc.kill()
            raise
    message = (out + err).strip()
    if proc.returncode == 3:
        raise InvalidArgument(message)
    if proc.returncode != 0:
        raise Internal(f"{what}: unshare exited {proc.returncode}: {message}")


def _bind_from(
    proc: subprocess.Popen[str],
    dir: Path,
    kinds: list[str],
    userns: UserNamespace | None,
    what: str,
) -> None:
    """Wait for the child's "ready", map its user namespace, pin its namespaces."""
    assert proc.stdout is not None
    if proc.stdout.readline() != "ready\n":
        _, err = proc.communicate(timeout=30)
        raise Internal(f"{what}: unshare failed: {err.strip()}")
    step = "writing the user namespace's id maps"
    try:
        if userns is not None:
            Path(f"/proc/{proc.pid}/uid_map").write_text(userns.uid_map())
            Path(f"/proc/{proc.pid}/gid_map").write_text(userns.gid_map())
        for kind in kinds:
            step = f"pinning the {kind} namespace"
            ns.mount(f"/proc/{proc.pid}/ns/{kind}", str(dir / kind), None, ns.MS_BIND, None)
    except OSError as e:
        raise Internal(f"{what}: {step}: {e.strerror}") from e


def _unpin_files(files: list[Path]) -> None:
    for path in files:
        _umount(path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise Internal(f"removing namespace file {path}: {e.strerror}") from e


def is_namespace_file(path: Path) -> bool:
    """True when `path` is a live namespace file (pinned, or /proc/<pid>/ns/*), not a
    plain file left behind: nsfs files are on another device than their directory."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def unpin(pinned: PinnedNamespaces) -> None:
    """Unmount (lazily) and delete every pinned namespace file, then our bind of the
    directory. Idempotent: files already gone are fine. A namespace is freed by the
    kernel once no process is left in it."""
    files = pinned.files()
    _unpin_files(files)
    for parent in sorted({p.parent for p in files}):
        _release_dir(parent)

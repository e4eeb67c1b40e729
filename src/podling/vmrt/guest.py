"""What the guest is told: the files of the `vmrt-cfg` share and the 9p shares it mounts.

The OCI spec is translated as far as a guest can honour it:
- process: args, env, cwd, uid and gid (supplementary groups are cleared: busybox's
  nsenter sets uid/gid only), noNewPrivileges; capabilities, seccomp, rlimits and
  AppArmor are not applied inside the guest, whose kernel is the isolation boundary.
- mounts: proc/sysfs/tmpfs/devpts/mqueue are mounted by the guest kernel (a tmpfs /dev
  becomes the guest's devtmpfs, so the usual device nodes exist); a bind mount of a
  directory is a 9p share of its own, of a file a share of its parent directory with the
  file bound from it; a bind from inside the rootfs is bound in the guest. cgroup mounts
  and other types are left out (the guest has no view of the node's cgroups).
- hostname; the network comes from net.py.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podling.vmrt.net import GuestNet

_GUEST_FS = ("proc", "sysfs", "tmpfs", "devpts", "mqueue")
_BIND_ONLY = {"bind", "rbind", "rprivate", "private", "rslave", "slave", "shared", "rshared"}
_9P = "trans=virtio,version=9p2000.L,msize=262144"


@dataclass(frozen=True)
class Share:
    tag: str  # the 9p mount tag
    path: Path  # on the node
    readonly: bool


@dataclass
class _Mounts:
    rootfs: Path
    shares: list[Share] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def share(self, path: Path, readonly: bool) -> str:
        """The guest dir where node dir `path` is mounted (shared once per path+mode)."""
        for i, s in enumerate(self.shares):
            if s.path == path and s.readonly == readonly:
                return f"/shares/{i}"
        i = len(self.shares)
        self.shares.append(Share(f"vmrt-m{i}", path, readonly))
        opts = _9P + (",ro" if readonly else "")
        self.lines.append(f"mkdir -p /shares/{i} && mount -t 9p -o {opts} vmrt-m{i} /shares/{i}")
        return f"/shares/{i}"


def process_script(process: dict[str, Any]) -> str:
    """A busybox sh script that execs OCI `process` in the rootfs at /ct (run.sh, and what
    the agent runs for an exec). nsenter -w changes dir before its chroot, so the cwd is
    given as its /ct path."""
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    cwd = "/ct/" + str(process.get("cwd") or "/").lstrip("/")
    env = [shlex.quote(e) for e in process.get("env") or [] if "=" in e]
    args = [shlex.quote(str(a)) for a in process.get("args") or []]
    nnp = "/bin/setpriv --nnp " if process.get("noNewPrivileges") else ""
    return (
        f"mkdir -p {shlex.quote(cwd)}\n"
        f"exec /bin/env -i {' '.join(env)} {nnp}"
        f"/bin/nsenter -F -S {uid} -G {gid} -r/ct -w{shlex.quote(cwd)} -- {' '.join(args)}\n"
    )


def _options(m: dict[str, Any]) -> list[str]:
    return [str(o) for o in m.get("options") or []]


def _mount_line(m: dict[str, Any], mounts: _Mounts) -> str | None:
    dest = "/ct/" + str(m.get("destination", "")).strip("/")
    kind, opts = str(m.get("type") or ""), _options(m)
    q = shlex.quote(dest)
    if kind in _GUEST_FS and "bind" not in opts and "rbind" not in opts:
        if kind == "tmpfs" and dest == "/ct/dev":
            return f"mkdir -p {q} && mount -t devtmpfs devtmpfs {q}"
        keep = ",".join(o for o in opts if o not in _BIND_ONLY) or "defaults"
        return f"mkdir -p {q} && mount -t {kind} -o {shlex.quote(keep)} {kind} {q}"
    if kind == "bind" or "bind" in opts or "rbind" in opts:
        return _bind_line(Path(str(m.get("source", ""))), q, "ro" in opts, mounts)
    return None


def _bind_line(source: Path, q: str, ro: bool, mounts: _Mounts) -> str | None:
    remount = f" && mount -o remount,bind,ro {q}" if ro else ""
    root = str(mounts.rootfs).rstrip("/")
    if str(source) == root or str(source).startswith(root + "/"):
        inner = shlex.quote("/ct/" + str(source)[len(root) :].lstrip("/"))
        return f"mkdir -p {q} && mount --bind {inner} {q}{remount}"
    if source.is_dir():
        return f"mkdir -p {q} && mount --bind {mounts.share(source, ro)} {q}{remount}"
    if source.exists():
        where = shlex.quote(f"{mounts.share(source.parent, ro)}/{source.name}")
        parent = shlex.quote(os.path.dirname(q.strip("'")))
        touch = f"mkdir -p {parent} && {{ [ -e {q} ] || touch {q}; }}"
        return f"{touch} && mount --bind {where} {q}{remount}"
    return None


def mounts_script(spec: dict[str, Any], rootfs: Path) -> tuple[str, list[Share]]:
    """(mounts.sh, the shares it needs) for the spec's mounts, in spec order."""
    mounts = _Mounts(rootfs)
    body: list[str] = []
    for m in spec.get("mounts") or []:
        line = _mount_line(m, mounts)
        if line is None:
            body.append(f"# left out: {m.get('type')} at {m.get('destination')}")
        else:
            body.append(f"{line} || echo 'mount {m.get('destination')} failed' > /dev/ttyS0")
    return "\n".join([*mounts.lines, *body]) + "\n", mounts.shares


def guest_env(spec: dict[str, Any], net: GuestNet | None) -> str:
    values = {
        "VMRT_HOSTNAME": str(spec.get("hostname") or "localhost"),
        "VMRT_IP": net.address if net else "",
        "VMRT_GW": net.gateway if net else "",
        "VMRT_MTU": str(net.mtu if net else 1500),
        "VMRT_ROOT_RO": "1" if (spec.get("root") or {}).get("readonly") else "0",
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def write_guest_dir(
    cfg_dir: Path, spec: dict[str, Any], rootfs: Path, net: GuestNet | None
) -> list[Share]:
    """Write guest.env, mounts.sh and run.sh into `cfg_dir`; returns the extra shares."""
    cfg_dir.mkdir(parents=True, exist_ok=True)
    script, shares = mounts_script(spec, rootfs)
    (cfg_dir / "mounts.sh").write_text(script)
    (cfg_dir / "guest.env").write_text(guest_env(spec, net))
    (cfg_dir / "run.sh").write_text(process_script(spec.get("process") or {}))
    return shares

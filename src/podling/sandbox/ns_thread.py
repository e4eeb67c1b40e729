"""Namespace work done by a throwaway thread of the daemon itself, with no child process.

Linux keeps the network, IPC and UTS namespaces per thread: a thread may unshare() or
setns() into them while the rest of the daemon stays where it is. Each call here starts a
fresh thread, changes its namespaces, runs the work and lets the thread end, so no pool
thread is ever left in a pod's namespace.

A user namespace cannot be made this way (unshare(CLONE_NEWUSER) refuses a multi-threaded
caller), so pods with one are pinned by a child process (namespaces.py).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from podling.errors import Internal, InvalidArgument, NotFound
from podling.oslib import ns

T = TypeVar("T")

FLAGS = {"net": ns.CLONE_NEWNET, "ipc": ns.CLONE_NEWIPC, "uts": ns.CLONE_NEWUTS}


def in_fresh_thread(fn: Callable[[], T], name: str) -> T:
    """Run `fn` in a new thread and wait for it; its result, or its exception re-raised."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def run_in_namespace(path: Path, nstype: int, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that first setns()'d into the namespace at `path`
    (nstype: ns.CLONE_NEWNET / CLONE_NEWIPC / CLONE_NEWUTS). Blocks until `fn` returns;
    returns its result or re-raises its exception. Sockets `fn` creates stay in that
    namespace. Raises NotFound if `path` is gone, Internal if setns fails."""

    def body() -> T:
        _enter(path, nstype)
        return fn()

    return in_fresh_thread(body, f"ns-{path.name}")


def run_in_netns(netns: Path, fn: Callable[[], T]) -> T:
    """run_in_namespace for a network namespace."""
    return run_in_namespace(netns, ns.CLONE_NEWNET, fn)


def _enter(path: Path, nstype: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"namespace file {path} does not exist (the pod was torn down)") from None
    try:
        ns.setns(fd, nstype)
    except OSError as e:
        raise Internal(f"entering namespace {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def pin_in_thread(
    dir: Path,
    kinds: list[str],
    hostname: str | None,
    sysctls: Mapping[str, tuple[str, str]],
) -> None:
    """Make new namespaces of `kinds` (net, ipc, uts) and bind them onto <dir>/<kind>
    (existing empty files). Inside them: `hostname` set (uts), each sysctl written
    (name -> (path under /proc/sys, value)), and lo up (net). Raises InvalidArgument for a
    sysctl the kernel lacks or refuses, Internal otherwise. On failure some files may be
    bound already: the caller unpins them."""
    flags = 0
    for kind in kinds:
        flags |= FLAGS[kind]

    def body() -> None:
        _checked("unsharing the pod's namespaces", ns.unshare, flags)
        if hostname is not None:
            _checked("setting the hostname", ns.sethostname, hostname)
        for name, (path, value) in sysctls.items():
            _write_sysctl(name, path, value)
        if "net" in kinds:
            _checked("setting lo up", ns.link_up, "lo")
        for kind in kinds:
            # /proc/self would name the thread group leader, still in the host's namespaces
            src, dst = f"/proc/thread-self/ns/{kind}", str(dir / kind)
            _checked(f"pinning the {kind} namespace", ns.mount, src, dst, None, ns.MS_BIND, None)

    in_fresh_thread(body, f"pin-{dir.parent.name[:8]}")


def _checked(step: str, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except OSError as e:
        raise Internal(f"pinning the pod's namespaces: {step}: {e.strerror}") from e


def _write_sysctl(name: str, path: str, value: str) -> None:
    """Write one sysctl in the calling thread's namespaces (/proc/sys/net, the IPC and UTS
    entries follow the namespaces of the thread that opens them)."""
    try:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    except FileNotFoundError:
        raise InvalidArgument(f"sysctl {name} does not exist on this kernel") from None
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ERANGE, errno.EPERM, errno.EACCES):
            raise InvalidArgument(f"sysctl {name}: the kernel refused {value}") from None
        raise Internal(f"pinning the pod's namespaces: sysctl {name}: {e.strerror}") from e

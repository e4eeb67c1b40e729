"""`podling-vmrt`: the command line conmon and podling's OciRuntime run.

    podling-vmrt [--root R] [--log-format F] [--log P] [--accel A] [--memory MB]
                 [--boot-dir D] [--modules-dir D] [--busybox B] VERB ...
    create --bundle B --pid-file F [--console-socket S] ID
    start ID | state ID | kill [--all] ID [SIG] | delete [--force] ID
    exec --pid-file F --process P [--detach] ID

Errors go to stderr as one JSON log line ({"level": "error", "msg": ...}), the form
OciRuntime reads from runc, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from podling.errors import PodlingError
from podling.vmrt import ops
from podling.vmrt.kernel import SYSTEM_BOOT_DIR, SYSTEM_MODULES_DIR

DEFAULT_ROOT = Path("/run/podling-vmrt")


def _global_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podling-vmrt", add_help=True)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--log-format", default="text")
    p.add_argument("--log", default="")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--accel", default="tcg", help="qemu accelerators, e.g. kvm:tcg")
    p.add_argument("--memory", type=int, default=0, help="guest MiB (default: the limit)")
    p.add_argument("--boot-dir", type=Path, default=SYSTEM_BOOT_DIR)
    p.add_argument("--modules-dir", type=Path, default=SYSTEM_MODULES_DIR)
    p.add_argument("--busybox", default="busybox")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create")
    c.add_argument("--bundle", "-b", type=Path, default=Path("."))
    c.add_argument("--pid-file", type=Path, required=True)
    c.add_argument("--console-socket", default=None)
    c.add_argument("id")
    for name in ("start", "state"):
        verbs.add_parser(name).add_argument("id")
    k = verbs.add_parser("kill")
    k.add_argument("--all", "-a", action="store_true")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="TERM")
    d = verbs.add_parser("delete")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")
    e = verbs.add_parser("exec")
    e.add_argument("--pid-file", type=Path, required=True)
    e.add_argument("--process", "-p", type=Path, required=True)
    e.add_argument("--detach", "-d", action="store_true")
    e.add_argument("id")
    return p


def _dispatch(a: argparse.Namespace) -> None:
    opts = ops.Options(
        root=a.root.absolute(),
        boot_dir=a.boot_dir,
        modules_dir=a.modules_dir,
        busybox=a.busybox,
        accel=a.accel,
        memory_mb=a.memory,
    )
    if a.verb == "create":
        ops.create(opts, a.id, a.bundle.absolute(), a.pid_file.absolute(), a.console_socket)
    elif a.verb == "start":
        ops.start(opts, a.id)
    elif a.verb == "state":
        print(json.dumps(ops.state(opts, a.id)))
    elif a.verb == "kill":
        ops.kill(opts, a.id, ops.parse_signal(a.signal))
    elif a.verb == "delete":
        ops.delete(opts, a.id, a.force)
    elif a.verb == "exec":
        ops.exec_process(opts, a.id, a.process.absolute(), a.pid_file.absolute())


def main(argv: Sequence[str] | None = None) -> int:
    args = _global_parser().parse_args(argv)
    try:
        _dispatch(args)
    except (PodlingError, OSError) as e:
        print(json.dumps({"level": "error", "msg": str(e)}), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""podling and containerd, the same workloads side by side: `python -m bench.run`.

    python -m bench.run [--quick] [--runs N]   # from the project root, as root
    python -m bench.run --cleanup              # after a crashed run: kill, unmount, delete

Prints a markdown table (medians over runs, spread, ratio podling/containerd) and writes
it to bench/results/latest.md. Everything lives under settings.BASE and is removed at
the end, whatever happens (see cleanup.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from bench import chart, cleanup, images, report, workloads
from bench.cri import Client
from bench.daemons import Containerd, Daemon, Podling
from bench.procs import rss_mb
from bench.settings import BASE, FULL, QUICK, RUNTIMES, Sizes
from tests.support.registry import RegistryServer

RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_containerd() -> None:
    """Debian's containerd (which brings ctr and the runc v2 shim), installed if missing."""
    if shutil.which("containerd") and shutil.which("containerd-shim-runc-v2"):
        return
    log("installing Debian's containerd")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "containerd"], check=True, env=env)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


class Bench:
    """The registry, both daemons and their clients; `close()` always cleans up."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.registry = RegistryServer(BASE / "registry")
        self.daemons: dict[str, Daemon] = {}
        self.clients: dict[str, Client] = {}

    def open(self) -> None:
        self.registry.start()
        images.push(self.registry.url, images.BUSYBOX, images.busybox())
        images.push(self.registry.url, images.PAUSE, images.pause())
        for daemon in (Podling(BASE, self.registry.url), Containerd(BASE, self.registry.url)):
            self.daemons[daemon.name] = daemon
            daemon.start()
            client = Client(daemon.socket, daemon.base / "logs", daemon.net.cgroup_root)
            self.clients[daemon.name] = client
            client.wait_ready()
            client.pull(images.BUSYBOX)
        self.clients["containerd"].pull(images.PAUSE)  # its sandbox image: present, as usual
        log("both runtimes ready, images present")

    def close(self) -> None:
        for name, client in self.clients.items():
            try:
                client.remove_all_pods()
            except Exception as e:  # the sweep below removes whatever this left
                log(f"{name}: removing pods failed: {e}")
            client.close()
        for daemon in self.daemons.values():
            daemon.stop()
        self.registry.stop()

    def one_run(self, index: int) -> report.Run:
        s = self.sizes
        pull_ref = f"docker.io/{images.REPO_PREFIX}/pull:run{index}"
        log(f"run {index}: building and pushing the {s.pull_mb} MB pull image")
        images.push(self.registry.url, pull_ref, images.pull_image(s.pull_mb))
        order = RUNTIMES if index % 2 == 0 else RUNTIMES[::-1]  # neither always goes first
        clients = {name: self.clients[name] for name in order}
        daemons = {name: self.daemons[name] for name in order}
        out: report.Run = {
            name: {"daemon RSS idle (MB)": rss_mb(d.pid)} for name, d in daemons.items()
        }
        log(f"run {index}: serial pod starts, both runtimes in turn")
        _merge(out, workloads.serial_starts(clients, s.serial_pods))
        for name, client in clients.items():
            log(f"run {index}: {name}, concurrent pod starts")
            out[name] |= workloads.concurrent_starts(client, s.concurrent_pods)
        log(f"run {index}: memory, then status/list and ExecSync in turn")
        _merge(
            out,
            workloads.loaded(
                clients,
                daemons,
                s.memory_pods,
                s.status_pods,
                s.status_calls,
                s.stats_calls,
                s.exec_calls,
            ),
        )
        for name, client in clients.items():
            log(f"run {index}: {name}, cold pull")
            out[name] |= workloads.cold_pull(client, daemons[name], pull_ref, s.pull_mb)
        return {name: out[name] for name in RUNTIMES}


def _merge(into: report.Run, more: report.Run) -> None:
    for name, metrics in more.items():
        into[name] |= metrics


def versions() -> str:
    def first_line(cmd: list[str]) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else "?"

    return (
        f"{first_line(['containerd', '--version'])}; {first_line(['runc', '--version'])}; "
        f"kernel {platform.release()}; {os.cpu_count()} CPUs"
    )


def write_results(
    runs: list[report.Run], table: str, sizes: Sizes, quick: bool, results: Path
) -> None:
    """latest.md (the table), latest.json (every run's raw figures), ratios.png."""
    results.mkdir(exist_ok=True)
    when = datetime.datetime.now().isoformat(timespec="seconds")
    mode = "--quick" if quick else "full"
    head = f"Run {when}, {mode}, {sizes.runs} runs: medians (min-max). {versions()}.\n\n"
    (results / "latest.md").write_text(head + table)
    (results / "latest.json").write_text(json.dumps({"sizes": sizes.__dict__, "runs": runs}))
    ratios = report.ratios(runs)
    targets = {m: report.target(m) for m in ratios}
    title = f"podling / containerd, {mode}, {when}"
    chart.write(results / "ratios.png", ratios, targets, title)
    log(f"written: {results}/latest.md, latest.json, ratios.png")


def bench(sizes: Sizes, quick: bool, results: Path = RESULTS) -> None:
    """Every workload on both runtimes, `sizes.runs` times; the table printed and written
    to `results`. Whatever happens, nothing of the run is left on the host afterwards."""
    ensure_containerd()
    if BASE.exists():
        log(f"{BASE} exists (an earlier run crashed?): cleaning it up first")
        cleanup.sweep()
    BASE.mkdir(parents=True)
    cleanup.note_host_dirs()
    b = Bench(sizes)
    try:
        b.open()
        runs = [b.one_run(i) for i in range(sizes.runs)]
    finally:
        try:
            b.close()
        finally:
            for line in cleanup.sweep():
                log(f"cleanup: {line}")
    table = report.table(runs)
    print(table)
    write_results(runs, table, sizes, quick, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument(
        "--cleanup", action="store_true", help="only remove a crashed run's leftovers"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: it starts container runtimes")
    signal.signal(signal.SIGTERM, _on_signal)
    if args.cleanup:
        for line in cleanup.sweep():
            log(f"cleanup: {line}")
        return 0
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    bench(sizes, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

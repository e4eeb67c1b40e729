"""Crash consistency: SIGKILL podlingd at every crash point of every multi-step operation
while a workload runs, restart it, and check that nothing was lost or leaked.

Crash points (src/podling/crashpoints.py) are discovered from one clean run of the
workload (the daemon logs each point it passes); each is then armed in turn with
PODLING_CRASH_AT=<point>#<n>. After each kill and restart:
- the sentinel pod and container (running throughout) are still ready/running, for real;
- every object whose create RPC returned OK exists, in the state the kubelet was told,
  unless its remove returned OK; the object of an interrupted create exists completely
  or not at all; an interrupted start/stop/remove may have happened or not;
- the kubelet's next moves (start what was created, stop and remove everything) succeed;
- then nothing is left beyond the sentinels: mounts, cgroups, processes (conmon and
  containers), iptables rules, IP allocations, CNI cache, bundles, pod dirs, exit files,
  snapshots (tests/reliability/crash_footprint.py `footprint`);
- the metadata store passes `PRAGMA integrity_check` and its references hold.

One daemon root serves every kill point: each check compares with the footprint before
it, and a leak found is counted once. PODLING_LONG=1 adds rounds that kill the daemon at
a random moment of the workload.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling import crashpoints
from tests.integration.conftest import push, registry_config
from tests.integration.pod_fixtures import make_cgroup_parent, remove_cgroup_parent
from tests.reliability import crash_footprint as fp
from tests.reliability import crash_support as cs
from tests.reliability.conftest import LONG
from tests.support.daemon import Daemon
from tests.support.images import BuiltImage, build_image, busybox_rootfs_layer, layer
from tests.support.pods import (
    BUSYBOX,
    container_config,
    load_busybox,
    pod_config,
    pod_daemon_config,
    remove_all,
    run_pod,
    start_container,
)
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root

LONG_ROUNDS = 40


class Rig:
    """One daemon root across restarts, the sentinels, and the tallies."""

    def __init__(self, base: Path, registry: RegistryServer) -> None:
        self.base = base
        self.logs = base / "logs"
        config = pod_daemon_config(
            base, cs.BRIDGE, cs.SUBNET, registry_config(registry.host), fp.CGROUP_PARENT
        )
        self.d = Daemon(base / "daemon", config)
        self.images = [
            push(registry, f"{cs.REPO}{j or ''}", "1", _image(f"marker {j}")) for j in range(2)
        ]
        self.image = self.images[0]
        self.sentinels: dict[str, str] = {}
        self.problems: dict[str, list[str]] = {"lost": [], "leaked": [], "inconsistent": []}
        self.rounds = 0
        self.flakes: list[str] = []  # workload calls that failed without a crash

    def start(self, crash_at: str = "") -> int:
        """(Re)start the daemon, armed at `crash_at`; returns the log offset it starts at."""
        if self.d.proc is not None and self.d.proc.poll() is None:
            code = self.d.stop()
            assert code == 0, f"podlingd exited {code}: {self.d.log.read_text()[-2000:]}"
        elif self.d.channel is not None:
            self.d.channel.close()
            self.d.channel = None
        self.d.socket.unlink(missing_ok=True)  # a killed daemon's: don't wait on it
        offset = self.d.log.stat().st_size if self.d.log.exists() else 0
        if crash_at:
            os.environ[crashpoints.ENV] = crash_at
        try:
            self.d.start()
        finally:
            os.environ.pop(crashpoints.ENV, None)
        return offset

    def log_since(self, offset: int) -> str:
        with self.d.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def make_sentinels(self) -> None:
        load_busybox(self.d, self.base)
        for i in range(2):
            pod = pod_config(f"sentinel-{i}", log_dir=self.logs)
            pod_id = run_pod(self.d, pod)
            cfg = container_config(f"sentinel-{i}", "sleep", "36000")
            self.sentinels[pod_id] = start_container(self.d, pod_id, pod, cfg)

    def workload(self, name: str, image: str = "") -> cs.Workload:
        return cs.Workload(self.d, image or self.image, name, self.logs)

    def check(self, loads: list[cs.Workload], before: dict[str, set[str]], where: str) -> None:
        """Restart unarmed, then every invariant; problems are filed under `where`."""
        self.rounds += 1
        self.start()
        leds = [w.ledger for w in loads]
        lost = cs.check_sentinels(self.d, self.sentinels)
        for led in leds:
            lost += cs.check_ledger(self.d, led)
        lost += cs.check_unknown(self.d, leds, self.sentinels, BUSYBOX)
        for led in leds:
            lost += cs.finish(self.d, led)
        store = fp.store_problems(self.d.root)
        leaked = fp.diff(before, _settled(self.d, before))
        for kind, found in (("lost", lost), ("leaked", leaked), ("inconsistent", store)):
            self.problems[kind] += [f"{where}: {p}" for p in found]


def _image(marker: str) -> BuiltImage:
    """Busybox under a small layer of its own: two layers to download and unpack, none
    shared with the sentinels' image."""
    return build_image([layer({"rel-crash": marker.encode()}), busybox_rootfs_layer()])


def _settled(d: Daemon, before: dict[str, set[str]], timeout: float = 5) -> dict[str, set[str]]:
    """The footprint, once processes that were just stopped have been reaped."""
    deadline = time.monotonic() + timeout
    while True:
        now = fp.footprint(d)
        if not fp.diff(before, now) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def discover(rig: Rig) -> list[str]:
    """Run the workload once, unarmed: every crash point it passes, as `name#n`."""
    offset = rig.d.log.stat().st_size
    w = rig.workload("discovery")
    assert w.run() == "", "the workload must complete on an unkilled daemon"
    names = re.findall(re.escape(cs.PASSED) + r"(.+)$", rig.log_since(offset), re.M)
    missing = [p for p in crashpoints.EXPLICIT if p not in names]
    assert not missing, f"the workload never reaches crash points {missing}"
    for op in ("RunPodSandbox/", "CreateContainer/"):
        assert any(n.startswith(op) for n in names), f"no {op} crash point passed"
    seen: Counter[str] = Counter()
    points = []
    for n in names:
        seen[n] += 1
        points.append(f"{n}#{seen[n]}")
    return points


def kill_at(rig: Rig, point: str, i: int, retry: bool = True) -> None:
    before = fp.footprint(rig.d)
    offset = rig.start(crash_at=point)
    w = rig.workload(f"k{i}")
    try:
        interrupted = w.run()
    except grpc.RpcError as e:
        # failed without a crash (seen: runc "can't get final child's PID" under load):
        # what the failure left must pass the same checks; then the point is tried again
        rig.flakes.append(f"{point}: {w.ledger.interrupted} failed: {e.details()}")
        rig.check([w], before, f"{point} [{w.ledger.interrupted} failed, no crash]")
        if not retry:
            raise
        kill_at(rig, point, i, retry=False)
        return
    if not interrupted:
        rig.problems["lost"].append(f"{point}: never reached by the workload")
        return
    assert rig.d.proc is not None and rig.d.proc.returncode == -signal.SIGKILL
    said = rig.log_since(offset)
    assert f"{cs.REACHED}{point}" in said, f"{point}: the daemon died elsewhere:\n{said[-3000:]}"
    rig.check([w], before, f"{point} [{interrupted}]")


def kill_randomly(rig: Rig, i: int, rnd: random.Random) -> None:
    """Long mode: SIGKILL at a random moment while two workloads (each with an image of
    its own) run at once."""
    before = fp.footprint(rig.d)
    rig.start()
    assert rig.d.proc is not None
    proc = rig.d.proc
    loads = [rig.workload(f"r{i}-{j}", rig.images[j]) for j in range(len(rig.images))]
    threads = [threading.Thread(target=_run_quietly, args=(w,)) for w in loads]
    for t in threads:
        t.start()
    time.sleep(rnd.uniform(0.05, 2.0))  # the workloads take about 1.5 s
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join(60)
    where = ", ".join(w.ledger.interrupted or "done" for w in loads)
    rig.check(loads, before, f"random kill {i} [{where}]")


def _run_quietly(w: cs.Workload) -> None:
    # the daemon is killed under it: any error is expected, the ledger says where it was
    with contextlib.suppress(Exception):
        w.run()


@pytest.fixture
def rig(tmp_path: Path, registry: RegistryServer) -> Iterator[Rig]:
    subprocess.run(["ip", "link", "add", cs.BRIDGE, "type", "bridge"], check=True)
    make_cgroup_parent(fp.CGROUP_PARENT)
    r = Rig(tmp_path, registry)
    try:
        r.start()
        r.make_sentinels()
        yield r
    finally:
        try:
            if r.d.proc is None or r.d.proc.poll() is not None:
                r.start()
            remove_all(r.d)
            for image in r.images:
                r.d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)))
        except Exception:
            r.d.kill()  # it cannot clean up: the emergency cleanup below does
            raise
        finally:
            r.d.stop()
            fp.emergency_cleanup(r.d)  # a no-op unless a check above already failed
            subprocess.run(["ip", "link", "del", cs.BRIDGE], check=False)
            remove_cgroup_parent(fp.CGROUP_PARENT)


def test_crash_consistency(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    points = discover(rig)
    only = os.environ.get("PODLING_CRASH_ONLY", "")  # a regex, to rerun some points by hand
    points = [p for p in points if re.search(only, p)] if only else points
    for i, point in enumerate(points):
        kill_at(rig, point, i)
    if LONG:
        rnd = random.Random(int(os.environ.get("PODLING_SEED", "0")) or None)
        for i in range(int(os.environ.get("PODLING_CRASH_ROUNDS", LONG_ROUNDS))):
            kill_randomly(rig, i, rnd)
    by_op = Counter(p.split("/", 1)[0] for p in points)
    lost, leaked, bad = (rig.problems[k] for k in ("lost", "leaked", "inconsistent"))
    lines = [f"crash points by operation: {dict(by_op)}"]
    lines += [f"  {p}" for p in lost + leaked + bad]
    lines += [f"  retried (a call failed without a crash): {f}" for f in rig.flakes]
    lines.append(
        f"crash points: {len(points)} tried ({rig.rounds} kills), {len(lost)} lost, "
        f"{len(leaked)} leaked, {len(bad)} inconsistent in {time.monotonic() - started:.0f}s"
    )
    print("\n".join(lines))  # captured: the reliability report's figures
    with capsys.disabled():  # and on the terminal, whatever pytest's capture
        print("\n" + "\n".join(lines))
    assert only or len(points) >= 50
    assert not lost and not leaked and not bad

"""StatsCollector keeps one CPU sample per cgroup, and forgets the stale ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podling.services.stats import SAMPLE_TTL_NS, StatsCollector


def collector() -> StatsCollector:
    return StatsCollector(snapshotter=Any, snapshots_dir="/x")  # type: ignore[arg-type]


def test_rate_from_the_previous_sample() -> None:
    c = collector()
    assert c._cpu("/a", 1_000_000_000, 0).usage_nano_cores.value == 0
    cpu = c._cpu("/a", 2_000_000_000, 500_000_000)  # half a core over one second
    assert cpu.usage_nano_cores.value == 500_000_000


def test_samples_of_cgroups_no_longer_read_are_dropped(tmp_path: Path) -> None:
    c = collector()
    for i in range(5000):  # containers come and go, each read once
        c._cpu(f"/gone/{i}", i, 0)
    now = SAMPLE_TTL_NS + 10_000
    c._cpu("/live", now - 1, 0)
    for i in range(4000):  # the map reaches twice its last pruned size: pruned again
        c._cpu(f"/new/{i}", now + i, 0)
    assert len(c._last) < 5000
    assert all(not p.startswith("/gone/") for p in c._last)
    # a cgroup read regularly keeps its sample, so its rate stays right
    assert c._cpu("/live", now + 1_000_000_000, 1_000_000_000).usage_nano_cores.value > 0

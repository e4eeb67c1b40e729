"""The benchmark's own logic (bench/), without runtimes: the order calls are made in,
percentiles, the table and its targets, the chart. tests/integration/test_bench_smoke.py
runs the whole harness against podlingd and containerd at tiny sizes."""

from __future__ import annotations

import struct
import zlib
from typing import Any, cast

from bench import chart, report
from bench.settings import FULL, QUICK
from bench.workloads import Clients, interleaved, percentile


def test_interleaved_alternates_runtimes_and_who_goes_first() -> None:
    calls: list[tuple[str, int]] = []

    def step(name: str, k: int) -> list[int]:
        calls.append((name, k))
        return list(range(k))

    clients = cast(Clients, {"a": object(), "b": object()})
    out = interleaved(clients, 25, 10, step)
    assert calls == [("a", 10), ("b", 10), ("b", 10), ("a", 10), ("a", 5), ("b", 5)]
    assert {name: len(v) for name, v in out.items()} == {"a": 25, "b": 25}


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 2001)]  # 1..2000, shuffled order must not matter
    values.reverse()
    assert percentile(values, 50) == 1000.0
    assert percentile(values, 99) == 1980.0  # 20 calls above it: the 21st-slowest
    assert percentile(values[:300], 99) == 1998.0  # of 300: the third-slowest
    assert percentile([7.0], 99) == 7.0


def _run(podling: dict[str, float], containerd: dict[str, float]) -> report.Run:
    return {"podling": podling, "containerd": containerd}


def test_table_gives_medians_spreads_ratios_and_targets() -> None:
    runs = [
        _run(
            {"full pod start p50 (ms)": p, "ContainerStatus, 100 pods, p99 (ms)": q, "x": 1.0},
            {"full pod start p50 (ms)": 100.0, "ContainerStatus, 100 pods, p99 (ms)": 1.0, "x": 2},
        )
        for p, q in ((50.0, 1.3), (55.0, 1.2), (60.0, 0.9))
    ]
    rows = report.table(runs).splitlines()
    assert (
        rows[2]
        == "| full pod start p50 (ms) | 55.0 (50.0-60.0) | 100 (100-100) | 0.55 | ≤ 0.6 met |"
    )
    assert rows[3] == (
        "| ContainerStatus, 100 pods, p99 (ms) | 1.20 (0.90-1.30) | 1.00 (1.00-1.00) | 1.20 "
        "| ≤ 1.0 missed |"
    )
    assert rows[4] == "| x | 1.00 (1.00-1.00) | 2.00 (2.00-2.00) | 0.50 |  |"


def test_every_target_of_the_issue_has_its_rows() -> None:
    assert report.target("full pod start p90 (ms)") == 0.6
    assert report.target("20 concurrent pod starts, wall (ms)") == 0.6
    assert report.target("helper PSS per pod (MB)") == 0.2
    assert report.target("daemon RSS, 50 pods (MB)") == 1.0
    assert report.target("ListContainerStats, 100 pods, p99 (ms)") == 1.0
    assert report.target("cold pull 300 MB, wall (s)") == 0.8
    assert report.target("cold pull 300 MB, daemon CPU (s)") is None
    assert report.target("RunPodSandbox p50 (ms)") is None


def test_full_sizes_are_the_issues() -> None:
    assert (FULL.serial_pods, FULL.concurrent_pods, FULL.status_pods) == (50, 20, 100)
    assert (FULL.memory_pods, FULL.pull_mb, FULL.runs) == (50, 300, 3)
    assert QUICK.serial_pods < FULL.serial_pods and QUICK.pull_mb < FULL.pull_mb


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    return chunks


def test_chart_is_a_png_with_a_row_per_ratio() -> None:
    ratios = {"full pod start p50 (ms)": 0.55, "ExecSync p50 (ms)": 1.4, "far": 9.0}
    targets: dict[str, Any] = {m: report.target(m) for m in ratios}
    few = _png_chunks(chart.draw(dict(list(ratios.items())[:1]), targets, "t"))
    many = _png_chunks(chart.draw(ratios, targets, "t"))
    width, height, depth, color = struct.unpack(">IIBB", many[b"IHDR"][:10])
    assert (depth, color) == (8, 2)  # 8-bit RGB
    rows = zlib.decompress(many[b"IDAT"])
    assert len(rows) == height * (1 + 3 * width)  # a filter byte + RGB per row
    assert height - struct.unpack(">I", few[b"IHDR"][4:8])[0] == 2 * chart.ROW
    assert b"IEND" in many

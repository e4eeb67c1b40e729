"""podling alone: daemon RSS before and after pulling a large image.

    python -m bench.micro_pullrss [--mb 150]   # from the project root, as root; ~20 s

Pushes bench.images.pull_image(MB) (random and compressible gzip layers) to a loopback
registry, starts podlingd on a temporary root, pulls it through the CRI and prints the
daemon's RSS idle, the pull's wall time and the RSS two seconds after the pull.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from bench import images
from tests.support.daemon import Daemon
from tests.support.images import push_image
from tests.support.registry import RegistryServer


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(mb: int, base: Path) -> dict[str, float]:
    with RegistryServer(base / "registry") as reg:
        push_image(reg.url, "pullrss/big", "1", images.pull_image(mb))
        cfg = f'[images]\npull_stall_timeout = 30\n[images.registries."{reg.host}"]\n'
        with Daemon(base / "daemon", cfg + "insecure = true\n") as d:
            assert d.proc is not None
            time.sleep(1)
            out = {"daemon RSS idle (MB)": rss_mb(d.proc.pid)}
            t0 = time.monotonic()
            spec = pb.ImageSpec(image=f"{reg.host}/pullrss/big:1")
            d.images.PullImage(pb.PullImageRequest(image=spec))
            out["pull wall (s)"] = time.monotonic() - t0
            time.sleep(2)
            out["daemon RSS after the pull (MB)"] = rss_mb(d.proc.pid)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_pullrss")
    parser.add_argument("--mb", type=int, default=150, help="compressed size of the image")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="podling-pullrss-", dir="/var/tmp") as tmp:
        for name, value in measure(args.mb, Path(tmp)).items():
            print(f"| {name} | {value:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

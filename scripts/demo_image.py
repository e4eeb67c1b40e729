"""Write a small busybox image (from Debian's busybox-static) as an OCI archive.

The node has no internet: this is how the main-job command gets a first image to load.
Usage: python scripts/demo_image.py DEST.tar [NAME]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.images import build_image, busybox_rootfs_layer, write_oci_archive  # noqa: E402


def main() -> None:
    dest = Path(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "localhost/podling/busybox:latest"
    dest.parent.mkdir(parents=True, exist_ok=True)
    image = build_image([busybox_rootfs_layer()], "gzip", {"Cmd": ["sh"]})
    write_oci_archive(image, name, dest)
    print(f"wrote {dest} ({name})")


if __name__ == "__main__":
    main()

"""What a doctor check reads (`Host`) and what it answers (`Finding`).

Checks never touch system locations directly: every path and command they look at comes
from the `Host` they are given, so tests build a fake host tree under a temp dir.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from podling.errors import InvalidArgument, PodlingError
from podling.image.reference import parse_reference

Level = Literal["error", "warning", "ok"]
LEVELS: tuple[Level, ...] = ("error", "warning", "ok")


@dataclass(frozen=True)
class Finding:
    """One result of one check. `why` and `fix` are empty for an ok finding."""

    level: Level
    check: str
    title: str
    why: str = ""
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Host:
    """The node as the checks see it.

    proc / cgroup_root: the /proc and /sys/fs/cgroup trees; kubelet_config: the kubelet's
    KubeletConfiguration file (kubeadm-flags.env beside it is read too); manifests: a folder
    of Kubernetes YAML manifests; docker_root: a Docker data root; containerd_config: a
    containerd config.toml (absent on a node without containerd). which() finds a binary
    like shutil.which; disk_free() gives the free bytes of the filesystem holding a path;
    podling_images() gives the repo tags podlingd has, or None when it cannot be asked.
    probe_image(ref) asks the image's registry (as podling would pull it: configured
    mirrors, insecure hosts) whether the manifest exists, fetching nothing: None when it
    does, else the error saying why not; probe_image itself is None when the network must
    not be used (the checks then say "not checked").
    """

    proc: Path
    cgroup_root: Path
    kubelet_config: Path
    manifests: Path
    docker_root: Path
    which: Callable[[str], str | None]
    disk_free: Callable[[Path], int]
    podling_images: Callable[[], list[str] | None]
    containerd_config: Path
    probe_image: Callable[[str], PodlingError | None] | None


def ok(check: str, title: str) -> Finding:
    return Finding("ok", check, title)


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist or cannot be read."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def kubelet_config(host: Host) -> dict[str, Any] | None:
    """The kubelet config file as a mapping; None when absent. A file that is not a YAML
    mapping is reported as an empty one (the kubelet itself would refuse it)."""
    text = read_text(host.kubelet_config)
    if text is None:
        return None
    try:
        doc = _yaml().safe_load(text)
    except _yaml().YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def kubelet_flag(host: Host, flag: str) -> tuple[str, Path] | None:
    """The value of `--flag` in the kubeadm-flags.env beside the kubelet config, if set."""
    env = host.kubelet_config.parent / "kubeadm-flags.env"
    text = read_text(env)
    if text is None:
        return None
    m = re.search(rf"--{re.escape(flag)}[= ]([^\s\"']+)", text)
    return (m.group(1), env) if m else None


def manifest_files(folder: Path) -> list[Path]:
    """Every .yaml/.yml file under `folder` (recursively), in name order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def manifest_docs(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Each YAML document (a mapping) of each manifest file; unparsable files are skipped
    (the check that reads them is about content, not syntax)."""
    for path in manifest_files(folder):
        text = read_text(path)
        if text is None:
            continue
        try:
            docs = list(_yaml().safe_load_all(text))
        except _yaml().YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict):
                yield path, doc


def unix_path(endpoint: str) -> str:
    """A CRI endpoint as a comparable socket path: no unix:// scheme, /var/run → /run
    (a symlink on every systemd-era distribution)."""
    path = endpoint.removeprefix("unix://")
    if path.startswith("/var/run/"):
        path = path.removeprefix("/var")
    return path


def normalize_ref(ref: str) -> str:
    """`ref` in podling's normalised form ("busybox" → "docker.io/library/busybox:latest");
    unchanged when it does not parse."""
    try:
        return str(parse_reference(ref))
    except InvalidArgument:
        return ref


def _yaml() -> Any:
    # imported on first use: the daemon runs the doctor's cheap checks at start, and PyYAML
    # adds ~0.8 MB of RSS that a node without a kubelet config never needs
    import yaml

    return yaml

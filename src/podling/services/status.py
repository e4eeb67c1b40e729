"""What Status reports: is the runtime ready, is the network ready, and why not.

Readiness is checked, not assumed: the configured OCI runtime and conmon must be
executable, and a CNI network config must exist whose plugins are all installed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from podling.config import Config


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


def runtime_condition(cfg: Config) -> Condition:
    missing = [b for b in (cfg.runtime.default_handler, "conmon") if shutil.which(b) is None]
    if missing:
        return Condition(
            "RuntimeReady",
            False,
            "RuntimeBinaryMissing",
            f"not found on PATH: {', '.join(missing)}; install them (apt-get install "
            f"{' '.join(missing)})",
        )
    return Condition("RuntimeReady", True)


def network_condition(cfg: Config) -> Condition:
    conf_dir = Path(cfg.network.cni_conf_dir)
    files = (
        sorted(p for p in conf_dir.glob("*") if p.suffix in (".conflist", ".conf", ".json"))
        if conf_dir.is_dir()
        else []
    )
    if not files:
        return _not_ready(f"no CNI network config in {conf_dir}")
    plugins = _plugin_types(files[0])
    if plugins is None:
        return _not_ready(f"{files[0]} is not a valid CNI config")
    bins = [Path(d) for d in cfg.network.cni_bin_dirs]
    missing = [t for t in plugins if not any((d / t).is_file() for d in bins)]
    if missing:
        return _not_ready(
            f"CNI plugins {', '.join(missing)} (needed by {files[0]}) not found in "
            f"{', '.join(map(str, bins))}"
        )
    return Condition("NetworkReady", True)


def _not_ready(message: str) -> Condition:
    return Condition("NetworkReady", False, "NetworkPluginNotReady", message)


def _plugin_types(path: Path) -> list[str] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    plugins = doc.get("plugins") if "plugins" in doc else [doc]
    if not isinstance(plugins, list):
        return None
    types = [p.get("type") for p in plugins if isinstance(p, dict)]
    return [t for t in types if isinstance(t, str)] or None

"""What Status reports: is the runtime ready, is the network ready, and why not.

Readiness is checked, not assumed: the configured OCI runtime and conmon must be
executable, and a CNI network config must exist whose plugins are all installed (the
daemon writes its default network at start when the conf dir holds none).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from podling.config import Config
from podling.sandbox.cni import CniManager


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


def runtime_condition(cfg: Config) -> Condition:
    missing = [b for b in (cfg.runtime.runc, cfg.runtime.conmon) if shutil.which(b) is None]
    if missing:
        return Condition(
            "RuntimeReady",
            False,
            "RuntimeBinaryMissing",
            f"not found on PATH: {', '.join(missing)}; install them (apt-get install "
            f"{' '.join(missing)})",
        )
    return Condition("RuntimeReady", True)


def network_condition(cni: CniManager) -> Condition:
    ready, message = cni.status()
    if ready:
        return Condition("NetworkReady", True)
    return Condition("NetworkReady", False, "NetworkPluginNotReady", message)

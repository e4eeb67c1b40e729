"""What Status reports: is the runtime ready, is the network ready, and why not.

Readiness is checked, not assumed: the configured OCI runtime and conmon must be
executable, and a CNI network config must exist whose plugins are all installed (the
daemon writes its default network at start when the conf dir holds none).
"""

from __future__ import annotations

from dataclasses import dataclass

from podling.runtimes.handlers import HandlerRegistry
from podling.sandbox.cni import CniManager


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


def runtime_conditions(handlers: HandlerRegistry) -> list[Condition]:
    """RuntimeReady follows the default handler; every other handler that cannot run gets
    a condition of its own naming the cause (informational: the kubelet reads only the
    two required ones)."""
    out: list[Condition] = []
    for h in handlers.all():
        if h.name == handlers.default:
            out.insert(
                0,
                Condition("RuntimeReady", h.ready, "" if h.ready else "RuntimeNotReady", h.reason),
            )
        elif not h.ready:
            out.append(
                Condition(f"RuntimeHandler_{h.name}_Ready", False, "RuntimeNotReady", h.reason)
            )
    if not out or out[0].type != "RuntimeReady":
        out.insert(
            0,
            Condition(
                "RuntimeReady",
                False,
                "RuntimeNotReady",
                f"default runtime handler {handlers.default!r} is not configured",
            ),
        )
    return out


def network_condition(cni: CniManager) -> Condition:
    ready, message = cni.status()
    if ready:
        return Condition("NetworkReady", True)
    return Condition("NetworkReady", False, "NetworkPluginNotReady", message)

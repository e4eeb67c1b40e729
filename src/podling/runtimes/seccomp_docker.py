"""Convert a Localhost seccomp profile (Docker's JSON format, or already OCI) to linux.seccomp.

Docker's format is a superset of the OCI one: `archMap` lists sub-architectures per
native architecture, a rule may carry a single `name`, and `includes`/`excludes` make a
rule depend on capabilities or architectures. The conversion keeps the rules that apply
to this container (its capabilities, the node's architecture), picks the node's
architectures from `archMap`, and drops the Docker-only keys. `minKernel` conditions are
treated as met (our kernels are recent). A profile that is already OCI passes through.
"""

from __future__ import annotations

from typing import Any

from podling.errors import InvalidArgument

_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386", "armv7l": "arm"}
_SCMP_ARCH = {
    "x86_64": "SCMP_ARCH_X86_64",
    "aarch64": "SCMP_ARCH_AARCH64",
    "arm64": "SCMP_ARCH_AARCH64",
}

_RULE_KEYS = ("names", "action", "errnoRet", "args")
_TOP_KEYS = ("defaultAction", "defaultErrnoRet", "flags", "listenerPath", "listenerMetadata")


def _architectures(profile: dict[str, Any], machine: str) -> list[str]:
    if "archMap" not in profile:
        return list(profile.get("architectures") or [])
    native = _SCMP_ARCH.get(machine)
    out: list[str] = []
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            out += [entry["architecture"], *(entry.get("subArchitectures") or [])]
    return out


def _applies(rule: dict[str, Any], caps: set[str], machine: str) -> bool:
    arch = _GO_ARCH.get(machine, machine)
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    return not (exc.get("arches") and arch in exc["arches"])


def _rule(rule: dict[str, Any], index: int, ref: str) -> dict[str, Any]:
    names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
    if not names or "action" not in rule:
        raise InvalidArgument(f"seccomp profile {ref}: syscalls[{index}] needs names and action")
    out = {k: rule[k] for k in _RULE_KEYS if k in rule}
    out["names"] = list(names)
    return out


def from_docker_format(
    profile: dict[str, Any], caps: list[str], machine: str, ref: str = ""
) -> dict[str, Any]:
    """linux.seccomp for `profile` as seen by a container with `caps` on `machine`."""
    if "defaultAction" not in profile:
        raise InvalidArgument(f"seccomp profile {ref}: defaultAction is missing")
    out = {k: profile[k] for k in _TOP_KEYS if k in profile}
    out["architectures"] = _architectures(profile, machine)
    rules = profile.get("syscalls") or []
    if not isinstance(rules, list):
        raise InvalidArgument(f"seccomp profile {ref}: syscalls must be a list")
    out["syscalls"] = [
        _rule(r, i, ref) for i, r in enumerate(rules) if _applies(r, set(caps), machine)
    ]
    return out

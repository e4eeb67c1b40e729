"""containerd registry mirrors → podling's [images.registries."host"] settings.

Two containerd layouts: inline `registry.mirrors."host".endpoint = [...]` (version 2) and
`registry.config_path`, a directory (version 3: a ':'-separated list, first match wins) of
`<host>/hosts.toml` files with an optional `server` and `[host."url"]` tables tried in
file order. podling tries a host's mirrors in order, then the upstream (https://<host>, or
http:// when `insecure`) unless `skip_upstream`; the plans below say the same thing.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from podling.errors import ConfigError

_ALL_CAPABILITIES = ["pull", "resolve", "push"]
_PORT_DIR = re.compile(r"^(.+)_(\d+)_$")  # containerd's alternate spelling of host:port


@dataclass
class RegistryPlan:
    """What one registry host maps to; `unmapped` holds (containerd key, why)."""

    mirrors: list[str] = field(default_factory=list)
    insecure: bool = False
    skip_upstream: bool = False
    unmapped: list[tuple[str, str]] = field(default_factory=list)


def _upstream_names(host: str) -> set[str]:
    return {host, "registry-1.docker.io"} if host == "docker.io" else {host}


def _add_endpoint(plan: RegistryPlan, host: str, url: str, key: str) -> None:
    """A mirror URL for `host`: the upstream itself is left to podling's own fallback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        plan.unmapped.append((key, f"{url!r} is not an http:// or https:// URL"))
        return
    if parts.netloc in _upstream_names(host) and parts.path.rstrip("/") in ("", "/v2"):
        # podling tries the upstream last anyway; plain http to it is the `insecure` flag.
        plan.insecure = plan.insecure or parts.scheme == "http"
        return
    if url not in plan.mirrors:
        plan.mirrors.append(url)


def inline_plan(host: str, endpoints: Any, key: str) -> RegistryPlan:
    """The plan of one version 2 `registry.mirrors."host".endpoint` list."""
    plan = RegistryPlan()
    if host == "*":
        plan.unmapped.append((key, "podling has no wildcard registry: list each host"))
        return plan
    if not isinstance(endpoints, list):
        plan.unmapped.append((key, "endpoint must be a list of URLs"))
        return plan
    for url in endpoints:
        _add_endpoint(plan, host, str(url), key)
    return plan


def hosts_plans(config_path: str, key: str) -> dict[str, RegistryPlan]:
    """Plans per host from the hosts.toml directories in `config_path`.
    A missing directory becomes an unmapped entry of the "" host; a hosts.toml that is not
    valid TOML raises ConfigError naming it."""
    plans: dict[str, RegistryPlan] = {}
    for d in filter(None, config_path.split(":")):
        base = Path(d)
        if not base.is_dir():
            plans.setdefault("", RegistryPlan()).unmapped.append(
                (key, f"{d}: no such directory, nothing imported from it")
            )
            continue
        for sub in sorted(p for p in base.iterdir() if (p / "hosts.toml").is_file()):
            host = _host_of(sub.name)
            if host not in plans:  # the first directory naming a host wins
                plans[host] = _hosts_file(host, sub / "hosts.toml")
    return plans


def _host_of(dirname: str) -> str:
    m = _PORT_DIR.match(dirname)
    return f"{m.group(1)}:{m.group(2)}" if m else dirname


def _hosts_file(host: str, path: Path) -> RegistryPlan:
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: not a valid hosts.toml: {e}") from e
    plan = RegistryPlan()
    if host == "_default":
        plan.unmapped.append((str(path), "podling has no default for all registries"))
        return plan
    hosts = doc.get("host", {})
    for url, h in hosts.items() if isinstance(hosts, dict) else ():
        _host_table(plan, host, url, h if isinstance(h, dict) else {}, f'{path}: host."{url}"')
    for k, v in doc.items():
        if k == "server" and isinstance(v, str):
            _server(plan, host, v, f"{path}: server")
        elif k not in ("host", "server") and v not in ("", [], False, None):
            plan.unmapped.append((f"{path}: {k}", "no podling equivalent"))
    return plan


def _host_table(plan: RegistryPlan, host: str, url: str, h: dict[str, Any], key: str) -> None:
    caps = h.get("capabilities", _ALL_CAPABILITIES)
    if "pull" not in caps:
        plan.unmapped.append(
            (key, "not a pull host (capabilities lack 'pull'); podling only pulls")
        )
        return
    if "resolve" not in caps:
        plan.unmapped.append(
            (
                f"{key}.capabilities",
                "containerd fetches only blobs there; podling also resolves tags through it",
            )
        )
    _add_endpoint(plan, host, url, key)
    for k, v in h.items():
        if k != "capabilities" and v not in ("", [], False, None, {}):
            plan.unmapped.append((f"{key}.{k}", "no podling equivalent"))


def _server(plan: RegistryPlan, host: str, url: str, key: str) -> None:
    """`server` replaces the upstream: podling expresses that as a last mirror plus
    skip_upstream (the default server, https://<host>, changes nothing)."""
    before = list(plan.mirrors)
    _add_endpoint(plan, host, url, key)
    if plan.mirrors != before:
        plan.skip_upstream = True

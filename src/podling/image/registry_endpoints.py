"""Which endpoints serve a registry host, and the URLs of manifests and blobs on them.

Per registry host: configured mirrors in order, then the upstream (unless
`skip_upstream`). Mirrors get `?ns=<host>` like containerd, so one mirror can serve
several registries. Docker Hub ("docker.io") is reached at registry-1.docker.io; any
other upstream at https://<host>, or http://<host> when the host is marked insecure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from podling.errors import ConfigError, InvalidArgument

__all__ = ["Endpoint", "HostConfig", "endpoints_for", "normalize_hosts"]

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_UPSTREAM = "https://registry-1.docker.io"
_MIRROR_RE = re.compile(r"^https?://[^/?#]+(/[^?#]*)?$")


@dataclass(frozen=True)
class HostConfig:
    """How to reach one registry host."""

    mirrors: tuple[str, ...] = ()  # endpoint URLs like "http://127.0.0.1:5000"
    insecure: bool = False  # the upstream host may be spoken to over plain http
    skip_upstream: bool = False  # only the mirrors, never the upstream host


@dataclass(frozen=True)
class Endpoint:
    """One base URL serving registry `host`; `mirror` endpoints get `?ns=<host>`."""

    base: str
    mirror: bool
    host: str

    def url(self, repo: str, kind: str, ref: str) -> str:
        """The URL of `ref` in `repo`; `kind` is "manifests" or "blobs"."""
        url = f"{self.base}/v2/{repo}/{kind}/{ref}"
        return f"{url}?ns={quote(self.host, safe='')}" if self.mirror else url


def _normalize_mirror(url: str) -> str:
    base = url.rstrip("/")
    base = base.removesuffix("/v2")
    if not _MIRROR_RE.match(base):
        raise ConfigError(f"registry mirror {url!r} must be an http:// or https:// URL")
    return base


def normalize_hosts(hosts: Mapping[str, HostConfig]) -> dict[str, HostConfig]:
    """`hosts` with mirror URLs checked and reduced to a base (no trailing "/" or "/v2").

    ConfigError for a mirror that is not an http:// or https:// URL.
    """
    return {
        host: HostConfig(
            tuple(_normalize_mirror(m) for m in cfg.mirrors), cfg.insecure, cfg.skip_upstream
        )
        for host, cfg in hosts.items()
    }


def endpoints_for(host: str, cfg: HostConfig) -> list[Endpoint]:
    """The endpoints tried for `host`, in order: mirrors, then upstream.

    InvalidArgument if `cfg` leaves none (skip_upstream without mirrors).
    """
    eps = [Endpoint(m, True, host) for m in cfg.mirrors]
    if not cfg.skip_upstream:
        if host == _DOCKER_HUB:
            base = _DOCKER_HUB_UPSTREAM
        else:
            base = f"{'http' if cfg.insecure else 'https'}://{host}"
        eps.append(Endpoint(base, False, host))
    if not eps:
        raise InvalidArgument(
            f"registry {host} is configured with skip_upstream and no mirrors: "
            "there is nowhere to pull from"
        )
    return eps

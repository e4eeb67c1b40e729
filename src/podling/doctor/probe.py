"""The real `Host.probe_image`: ask an image's registry whether its manifest exists, the
way podlingd would pull it (configured mirrors first, plain http only to hosts marked
insecure), with HEAD requests only: no manifest body, never a layer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from podling.config import Config
from podling.errors import DeadlineExceeded, PodlingError
from podling.image.reference import parse_reference
from podling.image.registry import HostConfig, RegistryClient


def registry_probe(cfg: Config, timeout: float = 10.0) -> Callable[[str], PodlingError | None]:
    """A probe using `cfg.images.registries`; each call runs its own short event loop and
    gives up after `timeout` seconds (DeadlineExceeded). None when the manifest exists."""
    hosts = {
        host: HostConfig(tuple(r.mirrors), r.insecure, r.skip_upstream)
        for host, r in cfg.images.registries.items()
    }

    def probe(image: str) -> PodlingError | None:
        try:
            asyncio.run(_check(hosts, image, timeout))
        except PodlingError as e:
            return e
        return None

    return probe


async def _check(hosts: dict[str, HostConfig], image: str, timeout: float) -> None:
    client = RegistryClient(hosts, stall_timeout=timeout, connect_timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            await client.check_manifest(parse_reference(image))
    except TimeoutError as e:
        raise DeadlineExceeded(f"no answer from the registry within {timeout:g}s") from e
    finally:
        await client.close()

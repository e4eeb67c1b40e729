"""The task that turns conmon's exit files into container state (and events)."""

from __future__ import annotations

import logging
from pathlib import Path

from podling.runtimes.conmon import ExitWatcher
from podling.services.containers import ContainerService

log = logging.getLogger(__name__)


async def watch_exits(containers: ContainerService) -> None:
    """Run until cancelled; exits of unknown ids (infra processes) are ignored."""
    paths = containers.deps.paths

    def bundle(cid: str) -> Path:
        return paths.bundle(cid)

    watcher = ExitWatcher(paths.exits, containers.conmon, bundle)
    try:
        async for cid, info in watcher:
            try:
                containers.on_exit(cid, info)
            except Exception:
                log.exception("recording the exit of %s failed", cid)
    finally:
        watcher.close()

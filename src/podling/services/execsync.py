"""ExecSync: run a command in a running container, wait for it, return its output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from podling.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from podling.runtimes.conmon import ExecResult
from podling.services import validate
from podling.services.container_create import spec_of
from podling.services.containers import ContainerService
from podling.store.pods import CT_RUNNING

# The kubelet reads at most this much of each stream (CRI: "capped at 16MB").
MAX_OUTPUT = 16 << 20


async def exec_sync(
    svc: ContainerService, cid: str, cmd: Sequence[str], timeout: int
) -> ExecResult:
    """Run `cmd` with the container's process settings (env, user, cwd, capabilities).
    A timeout kills the command and answers DEADLINE_EXCEEDED."""
    validate.command(cmd, "cmd")
    if not 0 <= timeout <= validate.MAX_EXEC_TIMEOUT:
        raise InvalidArgument(
            f"timeout must be 0 (none) to {validate.MAX_EXEC_TIMEOUT} seconds, got {timeout}"
        )
    rec = svc.get(cid)
    if rec.state != CT_RUNNING:
        raise FailedPrecondition(f"container {rec.id} is {rec.state}, not running")
    process = dict(spec_of(rec).get("process") or {})
    process["args"] = list(cmd)
    process["terminal"] = False
    result = await svc.handler(rec).conmon.exec_sync(
        cid=rec.id,
        bundle=Path(rec.bundle),
        process=process,
        timeout=float(timeout) if timeout else None,
        max_output=MAX_OUTPUT,
    )
    if result.timed_out:
        raise DeadlineExceeded(
            f"command {list(cmd)!r} did not finish within {timeout}s in container {rec.id}; "
            "it was killed"
        )
    return result

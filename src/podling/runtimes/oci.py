"""One OCI runtime binary (runc; crun/runsc later) driven as an async subprocess.

Every call runs `BINARY --root ROOT [extra...] --log-format json VERB ...` with stdout and
stderr captured. That is safe for every verb here; only `create` hands the caller's stdio
to the container, and `create` is conmon's job (see conmon.py), never this class's.

Errors carry the runtime's own words, e.g. "runc start ctest-1: cannot start a container
that has stopped":
- the runtime does not know the container → errors.NotFound
- the container is in the wrong state for the verb → errors.FailedPrecondition
- anything else (bad resources, the binary missing, ...) → errors.Internal
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from podling import errors

log = logging.getLogger(__name__)

# Words runc 1.1 (and crun) use for "no such container" and "wrong state".
_NOT_FOUND = ("does not exist", "no such container")
# A command the container cannot run (missing, a directory, not executable): the request
# is wrong, not the runtime; and the container is there (NOT_FOUND would say it is gone).
_BAD_COMMAND = ("unable to start container process: exec:", "executable file not found")
_WRONG_STATE = (
    "not in created state",
    "not running",
    "not stopped",
    "has stopped",
    "stopped container",
    "paused",
)
_LOGRUS_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')

# How long one runtime call may take before we give up on it (runc normally needs ~10 ms).
CALL_TIMEOUT = 60.0


def runtime_message(stderr: bytes | str) -> str:
    """The runtime's error text from its stderr: the `msg` of its JSON or logrus-text log
    lines (the last error line wins), else the stripped text itself."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    found: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        msg = _line_message(line)
        if msg:
            found.append(msg)
    return found[-1] if found else text.strip()


def _line_message(line: str) -> str:
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return line
        return str(doc.get("msg", line)) if isinstance(doc, dict) else line
    m = _LOGRUS_MSG.search(line)
    if m:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    return line


def is_bad_command(message: str) -> bool:
    """Whether a runtime failed because the process' command cannot be run (missing, a
    directory, not executable): a mistake in the request or image, not the node's."""
    lowered = message.lower()
    return any(w in lowered for w in _BAD_COMMAND)


def classify(what: str, message: str) -> errors.PodlingError:
    """Map a runtime failure message to the error class the CRI caller should see."""
    text = f"{what}: {message}"
    lowered = message.lower()
    if is_bad_command(message):  # first: its message may quote anything
        return errors.FailedPrecondition(text)
    if any(w in lowered for w in _NOT_FOUND):
        return errors.NotFound(text)
    if any(w in lowered for w in _WRONG_STATE):
        return errors.FailedPrecondition(text)
    return errors.Internal(text)


class OciRuntime:
    """One OCI runtime binary with its own `--root` state dir.

    `binary` is resolved against PATH once (conmon needs an absolute path). Methods are
    coroutines; none blocks the event loop.
    """

    def __init__(self, name: str, binary: str, root: Path, extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.binary = binary if "/" in binary else (shutil.which(binary) or binary)
        self.root = root
        self.extra_args = list(extra_args)

    def global_args(self) -> list[str]:
        """`[binary, "--root", root, *extra_args]`: conmon gets [1:] as --runtime-arg."""
        return [self.binary, "--root", str(self.root), *self.extra_args]

    async def _run(
        self, verb: str, *args: str, cid: str, stdin: bytes | None = None
    ) -> tuple[int, bytes, str]:
        """Run one verb; returns (returncode, stdout, runtime message)."""
        cmd = [*self.global_args(), "--log-format", "json", verb, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise errors.Unavailable(
                f"{self.name}: cannot run {self.binary!r} ({e.strerror}); is it installed?"
            ) from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), CALL_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise errors.DeadlineExceeded(
                f"{self.name} {verb} {cid}: no answer in {CALL_TIMEOUT:.0f}s"
            ) from None
        rc = proc.returncode if proc.returncode is not None else -1
        return rc, out, runtime_message(err) if rc != 0 else ""

    def _error(self, verb: str, cid: str, message: str) -> errors.PodlingError:
        return classify(f"{self.name} {verb} {cid}", message or "failed without a message")

    async def start(self, cid: str) -> None:
        """Start a created container (runs the process conmon's `create` prepared)."""
        rc, _, msg = await self._run("start", cid, cid=cid)
        if rc != 0:
            raise self._error("start", cid, msg)

    async def kill(self, cid: str, signal: int, *, all_processes: bool = False) -> None:
        """Send `signal` to the container's init (or, with all_processes, every process
        in it). A container that is already stopped or gone is not an error."""
        args = ["--all"] if all_processes else []
        rc, _, msg = await self._run("kill", *args, cid, str(signal), cid=cid)
        if rc == 0:
            return
        err = self._error("kill", cid, msg)
        if isinstance(err, errors.NotFound) or "not running" in msg.lower():
            return
        state = await self.state(cid)
        if state is None or state.get("status") == "stopped":
            return
        raise err

    async def delete(self, cid: str, *, force: bool = False) -> None:
        """Remove the runtime's state (and cgroups) for `cid`; gone already → fine.

        With force, a live container is SIGKILLed and waited for first: `delete -f`
        straight after a kill can leave busy cgroup dirs behind on runc 1.1.
        """
        if force:
            state = await self.state(cid)
            if state is None:
                return
            if state.get("status") != "stopped":
                await self.kill(cid, 9, all_processes=True)
                await self.wait_stopped(cid, 10.0)
        args = ["--force"] if force else []
        rc, _, msg = await self._run("delete", *args, cid, cid=cid)
        if rc == 0:
            return
        err = self._error("delete", cid, msg)
        if not isinstance(err, errors.NotFound):
            raise err

    async def state(self, cid: str) -> dict[str, Any] | None:
        """The runtime's state document (`status`: created/running/paused/stopped, `pid`,
        ...), or None when the runtime does not know the container."""
        rc, out, msg = await self._run("state", cid, cid=cid)
        if rc != 0:
            err = self._error("state", cid, msg)
            if isinstance(err, errors.NotFound):
                return None
            raise err
        try:
            doc = json.loads(out)
        except ValueError as e:
            raise errors.Internal(
                f"{self.name} state {cid}: unreadable answer {out[:200]!r}"
            ) from e
        if not isinstance(doc, dict):
            raise errors.Internal(f"{self.name} state {cid}: unexpected answer {out[:200]!r}")
        return doc

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        """Apply OCI `linux.resources` JSON to a live container (`update --resources -`)."""
        data = json.dumps(resources).encode()
        rc, _, msg = await self._run("update", "--resources", "-", cid, cid=cid, stdin=data)
        if rc != 0:
            raise self._error("update", cid, msg)

    async def wait_stopped(self, cid: str, timeout: float) -> bool:
        """Poll state until the container is stopped or gone; False if `timeout` passed."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            state = await self.state(cid)
            if state is None or state.get("status") == "stopped":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

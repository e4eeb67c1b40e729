"""What an exec / attach session ended with, and how that is put on the error stream.

Shared by the SPDY and WebSocket transports (server side) and by the clients, which
decode it again. Vocabulary:
- Outcome: exit code (exec) or success (attach) or a failure message.
- v4 payload: a Kubernetes metav1.Status JSON object, written always.
- v1 payload: plain text, written on failure only (empty stream = success).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from podling.errors import Internal, PodlingError
from podling.streaming.backend import AttachParams, Backend, ExecParams, ProcessIO

log = logging.getLogger(__name__)

_STDIN_QUEUE = 64
SUCCESS_JSON = b'{"metadata":{},"status":"Success"}'


@dataclass(frozen=True)
class Outcome:
    """exit_code is 0 for a successful attach; error set means the session failed."""

    exit_code: int = 0
    error: str = ""


async def run_backend(
    backend: Backend, params: ExecParams | AttachParams, io: ProcessIO
) -> Outcome:
    """Run the exec or attach through the backend; turn its failures into an Outcome.
    Cancellation (the client went away) propagates to the backend call."""
    try:
        if isinstance(params, ExecParams):
            return Outcome(exit_code=await backend.exec(params, io))
        await backend.attach(params, io)
        return Outcome()
    except PodlingError as e:
        return Outcome(error=e.message)
    except (OSError, ValueError, RuntimeError) as e:
        # a backend bug or an OS failure: the client still deserves a status
        log.exception("streaming backend failed")
        return Outcome(error=f"{type(e).__name__}: {e}")


def v4_status(outcome: Outcome) -> bytes:
    """The metav1.Status JSON for the v4/v5 error stream."""
    if outcome.error:
        text = outcome.error
        return json.dumps(
            {
                "metadata": {},
                "status": "Failure",
                "message": f"Internal error occurred: {text}",
                "reason": "InternalError",
                "details": {"causes": [{"message": text}]},
                "code": 500,
            },
            separators=(",", ":"),
        ).encode()
    if outcome.exit_code == 0:
        return SUCCESS_JSON
    # exit codes outside 0..255 are not representable for the client's 8-bit parse
    code = outcome.exit_code & 0xFF or 1
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        },
        separators=(",", ":"),
    ).encode()


def v1_status(outcome: Outcome) -> bytes:
    """The plain-text error stream of v1..v3: empty on success."""
    if outcome.error:
        return outcome.error.encode()
    if outcome.exit_code:
        return f"command terminated with non-zero exit code: {outcome.exit_code}".encode()
    return b""


class ResizeDecoder:
    """Parses a byte stream of concatenated JSON objects {"Width":w,"Height":h} (field
    names case-insensitive, any whitespace between them) into (width, height) pairs.
    Sizes with a zero dimension are dropped; malformed input raises ValueError."""

    def __init__(self) -> None:
        self._buf = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        try:
            self._buf += self._utf8.decode(data)  # keeps a split UTF-8 sequence for later
        except UnicodeDecodeError:
            raise ValueError("resize stream: not UTF-8") from None
        sizes: list[tuple[int, int]] = []
        while True:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return sizes
            try:
                obj, end = self._json.raw_decode(self._buf)
            except json.JSONDecodeError:
                if len(self._buf) > 4096:
                    raise ValueError("resize stream: malformed JSON") from None
                return sizes  # incomplete: wait for more
            self._buf = self._buf[end:]
            size = _size_of(obj)
            if size is not None:
                sizes.append(size)


def _size_of(obj: object) -> tuple[int, int] | None:
    if not isinstance(obj, dict):
        raise ValueError("resize stream: expected a JSON object")
    fields = {str(k).lower(): v for k, v in obj.items()}
    width, height = fields.get("width", 0), fields.get("height", 0)
    if not isinstance(width, int) or not isinstance(height, int):
        raise ValueError("resize stream: Width and Height must be integers")
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        return None
    return width, height


class QueueProcessIO:
    """A ProcessIO fed by a transport's reader (stdin chunks and sizes pushed into queues)
    and writing output through callables. `end()` marks the session over: stdin readers
    then see EOF and `resizes()` stops."""

    def __init__(
        self,
        *,
        has_stdin: bool,
        stdout: Callable[[bytes], Awaitable[None]] | None,
        stderr: Callable[[bytes], Awaitable[None]] | None,
    ) -> None:
        self._has_stdin = has_stdin
        self._stdout = stdout
        self._stderr = stderr
        # bounded: a process that does not read its stdin pushes back on the client
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_STDIN_QUEUE)
        self._sizes: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        self._stdin_eof = False
        self._ended = asyncio.Event()

    async def push_stdin(self, data: bytes) -> None:
        """Queue client stdin (waits while the queue is full); b"" = the client closed
        stdin. Data after EOF, or without a stdin stream, is dropped."""
        if self._stdin_eof or not self._has_stdin:
            return
        self._stdin_eof = not data
        await self._stdin.put(data)

    def push_size(self, size: tuple[int, int]) -> None:
        self._sizes.put_nowait(size)

    def end(self) -> None:
        self._ended.set()
        self._stdin_eof = True
        if self._stdin.full():  # the session is over: unread stdin no longer matters
            self._stdin.get_nowait()
        with contextlib.suppress(asyncio.QueueFull):
            self._stdin.put_nowait(b"")
        self._sizes.put_nowait(None)

    async def read_stdin(self) -> bytes:
        if not self._has_stdin:
            await self._ended.wait()
            return b""
        data = await self._stdin.get()
        if not data:
            self._stdin.put_nowait(b"")  # EOF is sticky
        return data

    async def write_stdout(self, data: bytes) -> None:
        if self._stdout is not None and data:
            await self._stdout(data)

    async def write_stderr(self, data: bytes) -> None:
        if self._stderr is not None and data:
            await self._stderr(data)

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:
        while (size := await self._sizes.get()) is not None:
            yield size
        self._sizes.put_nowait(None)


def resize_message(width: int, height: int) -> bytes:
    """One terminal-size event as the Go client encodes it (JSON + newline)."""
    return json.dumps({"Width": width, "Height": height}).encode() + b"\n"


def decode_status(payload: bytes, *, json_status: bool) -> int:
    """The exit code an error-stream payload stands for; Internal for a failure.
    Empty = success. v1-v3 (`json_status` False): any text is a failure."""
    if not payload.strip():
        return 0
    text = payload.decode("utf-8", "replace")
    if not json_status:
        raise Internal(f"error executing remote command: {text}")
    try:
        obj = json.loads(text)
    except ValueError:
        raise Internal(f"error stream protocol error: {text!r} is not a JSON Status") from None
    if not isinstance(obj, dict):
        raise Internal("error stream protocol error: unknown error")
    if obj.get("status") == "Success":
        return 0
    if obj.get("status") != "Failure":
        raise Internal("error stream protocol error: unknown error")
    if obj.get("reason") == "NonZeroExitCode":
        return _exit_code(obj)
    raise Internal(str(obj.get("message") or "remote command failed without a message"))


def _exit_code(status: dict[str, object]) -> int:
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            text = str(cause.get("message", ""))
            if text.isdigit() and int(text) <= 255:
                return int(text)
            raise Internal("error stream protocol error: invalid exit code value")
    raise Internal(f"error stream protocol error: no exit code in {status.get('message')!r}")

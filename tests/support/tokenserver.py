"""Small aiohttp servers on 127.0.0.1 run in a background thread, for tests.

`ThreadedServer(app)` serves any aiohttp app on a free port in its own thread and
event loop, so it works from sync and async tests alike.

`TokenServer(backing_url)` is a Docker-token-auth front for a RegistryServer: /v2/...
answers 401 + `WWW-Authenticate: Bearer realm=".../token",service="test-registry",
scope="repository:<repo>:pull"` unless the request carries a token it issued for that
scope; /token issues random tokens (optionally only to a basic user/password) and counts
requests; authorised requests are proxied to the backing registry. Push straight to
the backing registry.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import socket
import threading
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web

SERVICE = "test-registry"
_REPO_RE = re.compile(r"^/v2/(.+)/(manifests|blobs|tags)/")
_PASS_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Docker-Content-Digest",
    "Accept-Ranges",
    "Location",
)


class ThreadedServer:
    """Serve `app` on 127.0.0.1:<free port> from a daemon thread until `stop()`."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers still running (e.g. one simulating a stall) must not outlive the loop.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if not self._thread.is_alive():
            self._sock.close()
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        fut.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class TokenServer(ThreadedServer):
    """Bearer-token front for the registry at `backing_url` (see module docstring)."""

    def __init__(self, backing_url: str, users: dict[str, str] | None = None) -> None:
        self.backing_url = backing_url
        self.users = dict(users or {})
        self.tokens: dict[str, str] = {}  # token -> scope it grants
        self.token_requests = 0
        self.token_query: list[dict[str, str]] = []  # every /token query, for assertions
        self.seen_authorization: list[str] = []  # Authorization headers on /v2 requests
        self.requests: list[str] = []  # "METHOD /v2/path" of every /v2 request, in order
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        super().__init__(app)

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        self.token_query.append(dict(request.query))
        if self.users and not self._basic_ok(request.headers.get("Authorization", "")):
            return web.json_response({"details": "bad credentials"}, status=401)
        token = secrets.token_hex(16)
        self.tokens[token] = " ".join(request.query.getall("scope", []))
        return web.json_response({"token": token, "expires_in": 300})

    def _basic_ok(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return self.users.get(user) == password and bool(user)

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.seen_authorization.append(auth)
        self.requests.append(f"{request.method} {request.path}")
        m = _REPO_RE.match(request.path)
        scope = f"repository:{m.group(1)}:pull" if m else ""
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token not in self.tokens or (scope and scope not in self.tokens[token].split()):
            challenge = f'Bearer realm="{self.realm}",service="{SERVICE}"'
            if scope:
                challenge += f',scope="{scope}"'
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        return await proxy(self.backing_url, request)


async def proxy(backing_url: str, request: web.Request) -> web.Response:
    """Forward `request` to `backing_url` and relay the answer (Range passes through)."""
    headers = {k: v for k, v in request.headers.items() if k in ("Accept", "Range")}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(
            request.method,
            backing_url + request.path_qs,
            headers=headers,
            allow_redirects=False,
        ) as resp,
    ):
        body = await resp.read()
        out = {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers}
        out.pop("Content-Length", None)  # aiohttp sets it from the body
        return web.Response(status=resp.status, body=body, headers=out)


class StallingProxy(ThreadedServer):
    """A plain proxy to `backing_url` that stalls the first GET of blob `stall_digest`
    after sending half of it (then hangs until the client gives up); it records the
    Range header of every blob request so tests can see a resumed download."""

    def __init__(self, backing_url: str, stall_digest: str) -> None:
        self.backing_url = backing_url
        self.stall_digest = stall_digest
        self.stalled = False
        self.ranges: list[str] = []
        app = web.Application()
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        super().__init__(app)

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        if "/blobs/" in request.path:
            self.ranges.append(request.headers.get("Range", ""))
        if request.path.endswith(self.stall_digest) and not self.stalled:
            self.stalled = True
            full = await proxy(self.backing_url, request)
            assert isinstance(full.body, bytes)
            resp = web.StreamResponse(status=200)
            resp.content_length = len(full.body)
            await resp.prepare(request)
            await resp.write(full.body[: len(full.body) // 2])
            await asyncio.sleep(3600)  # cancelled when the server stops
        return await proxy(self.backing_url, request)

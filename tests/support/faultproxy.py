"""A registry proxy on 127.0.0.1 that injects faults, and a token server that refuses.

    with FaultProxy(registry.url) as front:
        front.inject("/blobs/" + digest, "reset", after=65536)   # next GET of that blob
        ... pull through front.host ...

`FaultProxy` forwards /v2/... to the backing registry (Range passes through) unless a
fault matches the request path: each fault applies to the next `times` matching
requests, then is used up. Kinds:

- "status": answer HTTP `status` with a distribution-spec error document
- "reset":  send the headers and the first `after` bytes of the real body, then abort the
            TCP connection (a connection reset mid-blob)
- "flip":   send the real body with every byte inverted (same length: wrong digest)

`RefusingTokenServer` is a TokenServer whose /token answers `refuse_status` while that
is set (401/403: the token service refuses; 5xx: it is broken); set it to None to heal.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tests.support.tokenserver import ThreadedServer, TokenServer, proxy


@dataclass
class Fault:
    match: str  # substring of the request path
    kind: str  # status, reset, flip
    times: int = 1
    status: int = 500
    after: int = 0


class FaultProxy(ThreadedServer):
    """Proxy to `backing_url` with injectable faults (see the module docstring)."""

    def __init__(self, backing_url: str) -> None:
        self.backing_url = backing_url
        self.faults: list[Fault] = []
        self.requests: list[str] = []  # "METHOD path [Range]" of every request
        self.injected: list[str] = []  # "kind path" of every fault served
        app = web.Application()
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        super().__init__(app)

    def inject(
        self, match: str, kind: str, *, times: int = 1, status: int = 500, after: int = 0
    ) -> None:
        self.faults.append(Fault(match, kind, times, status, after))

    def _take(self, path: str) -> Fault | None:
        for f in self.faults:
            if f.match in path and f.times > 0:
                f.times -= 1
                return f
        return None

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range", "")
        self.requests.append(f"{request.method} {request.path} {rng}".rstrip())
        fault = self._take(request.path) if request.path != "/v2/" else None
        if fault is None:
            return await proxy(self.backing_url, request)
        self.injected.append(f"{fault.kind} {request.path}")
        if fault.kind == "status":
            doc = {"errors": [{"code": "UNKNOWN", "message": f"injected HTTP {fault.status}"}]}
            return web.json_response(doc, status=fault.status)
        real = await proxy(self.backing_url, request)
        assert isinstance(real.body, bytes)
        if fault.kind == "flip":
            return web.Response(
                status=real.status, body=bytes(b ^ 0xFF for b in real.body), headers=real.headers
            )
        return await _reset_after(request, real, fault.after)


async def _reset_after(request: web.Request, real: web.Response, after: int) -> web.StreamResponse:
    """Start the real answer, send `after` bytes of its body, then drop the connection."""
    assert isinstance(real.body, bytes)
    resp = web.StreamResponse(status=real.status)
    for k in ("Content-Type", "Content-Range", "Docker-Content-Digest"):
        if k in real.headers:
            resp.headers[k] = real.headers[k]
    resp.content_length = len(real.body)
    await resp.prepare(request)
    await resp.write(real.body[:after])
    assert request.transport is not None
    request.transport.abort()
    return resp


class RefusingTokenServer(TokenServer):
    """A TokenServer whose /token answers `refuse_status` (with an error body) while set."""

    def __init__(self, backing_url: str) -> None:
        super().__init__(backing_url)
        self.refuse_status: int | None = None

    async def _token(self, request: web.Request) -> web.Response:
        if self.refuse_status is not None:
            self.token_requests += 1
            return web.json_response({"details": "refused"}, status=self.refuse_status)
        return await super()._token(request)

"""The CRI streaming server: one-time URLs for exec / attach / port-forward, and the
listener that serves them over SPDY/3.1 or WebSocket.

Lifecycle: `start()` binds (port 0 = ephemeral; the real port goes into the URLs);
`url(kind, params)` stores a pending request under a fresh token (the CRI Exec /
Attach / PortForward calls use it); a client then upgrades the URL's connection and
the session runs against the `Backend`; `stop()` closes the listener and every session.
Each connection is a task the server tracks: when it ends, every stream, socket and
backend call of that session is gone (`active_sessions` counts the live ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from wsproto import ConnectionType
from wsproto.connection import Connection as WsFraming

from podling.errors import FailedPrecondition, InvalidArgument
from podling.streaming import remotecommand, ws, ws_portforward
from podling.streaming.backend import Backend, Kind, Params, PortForwardParams
from podling.streaming.http_front import (
    ByteReader,
    HttpError,
    Request,
    is_spdy,
    is_websocket,
    negotiate,
    read_request,
    send_error,
    send_switch,
    split_path,
    websocket_accept,
)
from podling.streaming.portforward import VERSION as PORTFORWARD_VERSION
from podling.streaming.portforward import PortForwarder, stream_filter
from podling.streaming.spdy.session import SpdySession
from podling.streaming.tokens import TokenCache
from podling.streaming.wsconn import TunnelReader, TunnelWriter, WsTransport

log = logging.getLogger(__name__)

KINDS: tuple[Kind, ...] = ("exec", "attach", "portforward")
HEAD_TIMEOUT = 30.0  # a connection that sends no complete request head is dropped


class StreamingServer:
    """See the module docstring. `tls_cert`/`tls_key` (both or neither) switch to https."""

    def __init__(
        self,
        backend: Backend,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        tls_cert: str = "",
        tls_key: str = "",
        idle_timeout: float = 4 * 3600.0,
        token_ttl: float = 60.0,
        max_tokens: int = 1000,
    ) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise InvalidArgument(
                "streaming TLS needs both a certificate and a key file; set both or neither"
            )
        self._backend = backend
        self._address = address
        self._port = port
        self._tls = (tls_cert, tls_key) if tls_cert else None
        self._idle = idle_timeout
        self._tokens = TokenCache(ttl=token_ttl, max_tokens=max_tokens)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[object]] = set()
        self._base = ""

    @property
    def active_sessions(self) -> int:
        """Connections currently being served (handshake or session)."""
        return len(self._conns)

    async def start(self) -> None:
        """Bind and listen. Errors from bind (address in use...) propagate as OSError."""
        ssl_ctx = None
        if self._tls is not None:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(*self._tls)
        self._server = await asyncio.start_server(
            self._handle, self._address, self._port, ssl=ssl_ctx
        )
        port = self._server.sockets[0].getsockname()[1]
        host = self._address if self._address not in ("", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self._base = f"{'https' if ssl_ctx else 'http'}://{host}:{port}/"

    async def stop(self) -> None:
        """Stop listening and end every session (their backend calls are cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def url(self, kind: Kind, params: Params) -> str:
        """The one-time URL for a request (ResourceExhausted when too many are pending)."""
        if not self._base:
            raise FailedPrecondition("the streaming server is not started; call start() first")
        return f"{self._base}{kind}/{self._tokens.issue(kind, params)}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            log.debug("streaming connection ended: %s", e)
        except Exception:  # the top of a connection task: log, never kill the server
            log.exception("streaming connection failed")
        except asyncio.CancelledError:
            # stop() cancels connection tasks; nothing awaits them but asyncio's stream
            # callback, which would log a cancelled task as an unhandled error
            log.debug("streaming connection cancelled")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req: Request | None = None
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                req = await read_request(reader)
            kind, params = self._route(req)
            if is_websocket(req):
                await self._websocket(req, kind, params, reader, writer)
            elif is_spdy(req):
                await self._spdy(req, kind, params, reader, writer)
            else:
                raise HttpError(400, "unable to upgrade: missing upgrade headers in request")
        except HttpError as e:
            await send_error(writer, req, e)
        except TimeoutError:
            log.debug("no request head within %s s; closing", HEAD_TIMEOUT)

    def _route(self, req: Request) -> tuple[Kind, Params]:
        """The endpoint and stored request for `req`; consumes the token."""
        try:
            route, token = split_path(req.path)
        except InvalidArgument as e:
            raise HttpError(404, e.message) from None
        kind = next((k for k in KINDS if k == route), None)
        if kind is None:
            raise HttpError(404, f"no streaming endpoint {route!r}")
        if req.method not in ("GET", "POST"):
            raise HttpError(405, f"method {req.method} not allowed; use GET or POST")
        params = self._tokens.consume(kind, token)
        if params is None:
            raise HttpError(404, "unknown, expired or already used streaming token")
        return kind, params

    async def _spdy(
        self,
        req: Request,
        kind: Kind,
        params: Params,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        supported = (PORTFORWARD_VERSION,) if kind == "portforward" else remotecommand.VERSIONS
        offered = req.values("x-stream-protocol-version")
        version = negotiate(offered, supported, "X-Stream-Protocol-Version")
        await send_switch(
            writer,
            req,
            [
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", version),
            ],
        )
        # nothing may be sent now until the client's first frame (§4.1): the session
        # only ever replies, so this holds
        session = SpdySession(
            ByteReader(reader, req.leftover),
            writer,
            server=True,
            idle_timeout=self._idle,
            stream_filter=stream_filter if kind == "portforward" else None,
        )
        if isinstance(params, PortForwardParams):
            await PortForwarder(session, self._backend, params).serve()
        else:
            await remotecommand.serve(session, version, self._backend, params)

    async def _websocket(
        self,
        req: Request,
        kind: Kind,
        params: Params,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if req.method != "GET":
            raise HttpError(400, "unable to upgrade: a WebSocket handshake must use GET")
        subprotocol = ws.choose_subprotocol(kind, req.values("sec-websocket-protocol"))
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", websocket_accept(req)),
        ]
        if subprotocol:
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        await send_switch(writer, req, headers)
        framing = WsFraming(ConnectionType.SERVER)
        if req.leftover:
            framing.receive_data(req.leftover)
        transport = WsTransport(framing, reader, writer)
        if not isinstance(params, PortForwardParams):
            await ws.serve_remote_command(transport, subprotocol, self._backend, params, self._idle)
        elif subprotocol == ws.TUNNEL:
            await self._tunnel(transport, params)
        else:
            await ws_portforward.serve(transport, subprotocol, self._backend, params, self._idle)

    async def _tunnel(self, transport: WsTransport, params: PortForwardParams) -> None:
        """SPDY port-forward carried in binary WebSocket messages (§7.5)."""
        session = SpdySession(
            TunnelReader(transport),
            TunnelWriter(transport),
            server=True,
            idle_timeout=self._idle,
        )
        try:
            await PortForwarder(session, self._backend, params).serve()
        finally:
            await transport.close(1000, wait=2.0)

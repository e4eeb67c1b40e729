"""The asyncio SPDY session: a server and a client session over a socketpair, and a
hand-driven raw peer for what a well-behaved session would never send."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from podling.streaming.spdy import frames as f
from podling.streaming.spdy.session import SpdySession, SpdyTimeout
from podling.streaming.spdy.stream import SessionClosedError, SpdyStream, StreamClosedError

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def socket_streams() -> tuple[Streams, Streams]:
    a, b = socket.socketpair()
    return await asyncio.open_connection(sock=a), await asyncio.open_connection(sock=b)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@dataclass
class Pair:
    server: SpdySession
    client: SpdySession
    runs: list[asyncio.Task[None]]
    writers: list[asyncio.StreamWriter]

    async def stop(self) -> None:
        await self.client.close()
        await self.server.close()
        await asyncio.wait_for(asyncio.gather(*self.runs), 10)
        for w in self.writers:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


async def make_pair(**server_kw: object) -> Pair:
    (sr, sw), (cr, cw) = await socket_streams()
    server = SpdySession(sr, sw, server=True, **server_kw)  # type: ignore[arg-type]
    client = SpdySession(cr, cw, server=False)
    runs = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
    return Pair(server, client, runs, [sw, cw])


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await make_pair()
    yield p
    await p.stop()


async def read_all(stream: SpdyStream) -> bytes:
    out = bytearray()
    while chunk := await stream.read():
        out += chunk
    return bytes(out)


# --- streams, data, half-close ---


async def test_open_delivers_headers_and_waits_for_the_reply(pair: Pair) -> None:
    opened = []
    for kind in ("error", "stdin", "stdout", "stderr", "resize"):
        stream = await pair.client.open({"streamType": kind, "X-Multi": "a\0b"})
        opened.append(stream)
        peer = await asyncio.wait_for(pair.server.accept(), 5)
        assert peer.headers == {"streamtype": kind, "x-multi": "a\0b"}
        assert peer.id == stream.id
    assert [s.id for s in opened] == [1, 3, 5, 7, 9]  # client ids: odd, increasing


async def test_data_both_ways_and_half_close(pair: Pair) -> None:
    stream = await pair.client.open({"streamtype": "stdin"})
    peer = await pair.server.accept()
    await stream.write(b"hello ")
    await stream.write(b"server")
    await stream.close()
    await stream.close()  # idempotent
    assert await read_all(peer) == b"hello server"
    assert peer.remote_closed
    # the server side is still open for writing after the client's FIN
    await peer.write(b"still talking")
    await peer.close()
    assert await read_all(stream) == b"still talking"
    assert stream.remote_closed
    with pytest.raises(StreamClosedError):
        await stream.write(b"after close")
    with pytest.raises(StreamClosedError):
        await stream.write(b"")


async def test_open_with_fin_is_half_closed_at_once(pair: Pair) -> None:
    stream = await pair.client.open({"streamtype": "stdout"}, fin=True)
    peer = await pair.server.accept()
    assert await peer.read() == b""
    await peer.write(b"out")
    await peer.close()
    assert await read_all(stream) == b"out"
    with pytest.raises(StreamClosedError):
        await stream.write(b"x")


async def test_server_can_open_streams_with_even_ids(pair: Pair) -> None:
    stream = await pair.server.open({"streamtype": "data"})
    assert stream.id == 2
    peer = await pair.client.accept()
    await peer.write(b"pong")
    await peer.close()
    assert await read_all(stream) == b"pong"


async def test_reset_ends_both_directions(pair: Pair) -> None:
    stream = await pair.client.open({"streamtype": "data"})
    peer = await pair.server.accept()
    await stream.write(b"before")
    await eventually(lambda: peer.buffered > 0)
    await stream.reset()
    await stream.reset()  # idempotent
    assert await read_all(peer) == b"before"  # data sent before the RST stays readable
    assert peer.remote_closed
    with pytest.raises(StreamClosedError, match="reset"):
        await peer.write(b"nobody listens")
    with pytest.raises(StreamClosedError, match="reset"):
        await stream.write(b"x")
    assert await stream.read() == b""


async def test_ping_round_trip_both_ways(pair: Pair) -> None:
    rtt = await pair.client.ping()
    assert 0 <= rtt < 5
    assert 0 <= await pair.server.ping() < 5


async def test_many_concurrent_streams(pair: Pair) -> None:
    async def echo_server() -> None:
        async def echo(s: SpdyStream) -> None:
            await s.write(await read_all(s))
            await s.close()

        tasks = []
        for _ in range(60):
            tasks.append(asyncio.create_task(echo(await pair.server.accept())))
        await asyncio.gather(*tasks)

    async def one(i: int) -> bytes:
        s = await pair.client.open({"requestid": str(i)})
        await s.write(f"message {i}".encode() * 100)
        await s.close()
        return await read_all(s)

    server = asyncio.create_task(echo_server())
    got = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(60))), 20)
    await server
    assert got == [f"message {i}".encode() * 100 for i in range(60)]
    assert pair.server._streams == {}  # fully closed streams are forgotten


async def test_large_transfer_is_intact_both_ways(pair: Pair) -> None:
    blob = os.urandom(8 << 20)
    stream = await pair.client.open({"streamtype": "data"})
    peer = await pair.server.accept()

    async def send(s: SpdyStream, data: bytes) -> None:
        for i in range(0, len(data), 1 << 20):
            await s.write(data[i : i + (1 << 20)])
        await s.close()

    results = await asyncio.wait_for(
        asyncio.gather(
            send(stream, blob), read_all(peer), send(peer, blob[::-1]), read_all(stream)
        ),
        60,
    )
    digest = hashlib.sha256
    assert digest(results[1]).digest() == digest(blob).digest()
    assert digest(results[3]).digest() == digest(blob[::-1]).digest()


async def test_a_peer_that_stops_reading_meets_backpressure() -> None:
    limit = 128 * 1024
    p = await make_pair(stream_buffer=limit)
    try:
        stream = await p.client.open({"streamtype": "stdin"})
        peer = await p.server.accept()
        blob = os.urandom(4 << 20)
        writer = asyncio.create_task(stream.write(blob))
        await eventually(lambda: peer.buffered > limit)
        await asyncio.sleep(0.3)
        # the server side stopped reading the socket: its queue stays bounded and the
        # client's write cannot finish
        assert not writer.done()
        assert limit < peer.buffered <= limit + f.DATA_PIECE
        # the client's session buffers no more than the transport's high-water mark
        assert p.writers[1].transport.get_write_buffer_size() <= 256 * 1024
        assert not p.server.closed and not p.client.closed
        got = bytearray()
        while len(got) < len(blob):
            got += await asyncio.wait_for(peer.read(), 5)
            assert peer.buffered <= limit + f.DATA_PIECE
        await asyncio.wait_for(writer, 5)
        assert bytes(got) == blob
    finally:
        await p.stop()


async def test_resetting_an_unread_stream_resumes_the_session() -> None:
    p = await make_pair(stream_buffer=64 * 1024)
    try:
        stuck = await p.client.open({"streamtype": "stdin"})
        stuck_peer = await p.server.accept()
        writer = asyncio.create_task(stuck.write(b"x" * (2 << 20)))
        await eventually(lambda: stuck_peer.buffered > 64 * 1024)
        await stuck_peer.reset()
        other = await asyncio.wait_for(p.client.open({"streamtype": "data"}), 5)
        other_peer = await p.server.accept()
        await other.write(b"flows again")
        assert await other_peer.read() == b"flows again"
        with pytest.raises(StreamClosedError):
            await asyncio.wait_for(writer, 5)
    finally:
        await p.stop()


# --- session end ---


async def test_goaway_ends_accept_and_reads(pair: Pair) -> None:
    stream = await pair.client.open({"streamtype": "stdout"})
    peer = await pair.server.accept()
    waiting = asyncio.create_task(pair.server.accept())
    await asyncio.sleep(0.01)
    await pair.client.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 5)
    assert await asyncio.wait_for(peer.read(), 5) == b""
    await asyncio.wait_for(pair.runs[0], 5)  # the server's run() returned by itself
    assert pair.server.closed
    with pytest.raises(ConnectionError):
        await pair.server.accept()
    with pytest.raises(SessionClosedError):
        await peer.write(b"x")
    with pytest.raises(SessionClosedError):
        await pair.server.open({})
    with pytest.raises(SessionClosedError):
        await pair.server.ping()
    await peer.close()  # harmless after the end
    await peer.reset()
    assert await stream.read() == b""


async def test_idle_timeout_closes_the_session() -> None:
    p = await make_pair(idle_timeout=0.2)
    try:
        await p.client.ping()
        await asyncio.wait_for(p.runs[0], 5)
        assert p.server.closed
        await asyncio.wait_for(p.runs[1], 5)  # the client saw GOAWAY/EOF
        assert p.client.closed
    finally:
        await p.stop()


async def test_activity_keeps_the_session_open() -> None:
    p = await make_pair(idle_timeout=1.0)
    try:
        for _ in range(8):
            await p.client.ping()
            await asyncio.sleep(0.2)
        assert not p.server.closed
    finally:
        await p.stop()


async def test_close_is_idempotent_and_ends_run(pair: Pair) -> None:
    await pair.server.close()
    await pair.server.close()
    await asyncio.wait_for(asyncio.gather(*pair.runs), 5)
    assert pair.server.closed and pair.client.closed


async def test_refused_stream_fails_open() -> None:
    def only_known(headers: object) -> int | None:
        assert isinstance(headers, dict)
        return None if headers.get("streamtype") in ("error", "data") else f.REFUSED_STREAM

    p = await make_pair(stream_filter=only_known)
    try:
        with pytest.raises(StreamClosedError, match="reset by peer"):
            await p.client.open({"streamtype": "bogus"})
        assert (await p.client.open({"streamtype": "data"})).id == 3
        assert (await p.server.accept()).headers["streamtype"] == "data"
    finally:
        await p.stop()


async def test_too_many_streams_are_refused() -> None:
    p = await make_pair(max_streams=3)
    try:
        for _ in range(3):
            await p.client.open({})
        with pytest.raises(StreamClosedError):
            await p.client.open({})
    finally:
        await p.stop()


# --- against a raw peer ---


@dataclass
class RawPeer:
    """A hand-driven SPDY client talking to a SpdySession server."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    encoder: f.FrameEncoder
    decoder: f.FrameDecoder

    def send(self, *frames: f.Frame) -> None:
        for frame in frames:
            self.writer.write(self.encoder.encode(frame))

    async def recv(self, timeout: float = 5) -> f.Frame | None:
        """The next frame, or None at EOF."""
        while (frame := self.decoder.next_frame()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.decoder.feed(data)
        return frame


@pytest.fixture
async def raw() -> AsyncIterator[tuple[SpdySession, RawPeer, asyncio.Task[None]]]:
    (sr, sw), (cr, cw) = await socket_streams()
    session = SpdySession(sr, sw, server=True)
    run = asyncio.create_task(session.run())
    yield session, RawPeer(cr, cw, f.FrameEncoder(), f.FrameDecoder()), run
    await session.close()
    await asyncio.wait_for(run, 10)
    for w in (sw, cw):
        w.close()
        with contextlib.suppress(ConnectionError):
            await w.wait_closed()


RawFixture = tuple[SpdySession, RawPeer, asyncio.Task[None]]


async def test_server_sends_nothing_unsolicited(raw: RawFixture) -> None:
    _, peer, _ = raw
    with pytest.raises(TimeoutError):
        await peer.recv(timeout=0.2)


async def test_ping_is_echoed_byte_for_byte(raw: RawFixture) -> None:
    _, peer, _ = raw
    peer.writer.write(bytes.fromhex("800300060000000400000001"))
    data = await asyncio.wait_for(peer.reader.readexactly(12), 5)
    assert data == bytes.fromhex("800300060000000400000001")


async def test_syn_stream_gets_an_immediate_reply(raw: RawFixture) -> None:
    session, peer, _ = raw
    peer.send(f.SynStream(1, {"streamtype": "error"}))
    assert await peer.recv() == f.SynReply(1)
    stream = await session.accept()
    await stream.write(b"oops")
    await stream.close()
    assert await peer.recv() == f.DataFrame(1, b"oops")
    assert await peer.recv() == f.DataFrame(1, b"", f.FLAG_FIN)


async def test_bad_stream_ids_are_reset(raw: RawFixture) -> None:
    _, peer, _ = raw
    peer.send(f.SynStream(2, {}))  # even: server parity
    assert await peer.recv() == f.RstStream(2, f.PROTOCOL_ERROR)
    peer.send(f.SynStream(5, {}))
    assert await peer.recv() == f.SynReply(5)
    peer.send(f.SynStream(3, {}))  # lower than one already seen
    assert await peer.recv() == f.RstStream(3, f.PROTOCOL_ERROR)


async def test_data_on_unknown_streams(raw: RawFixture) -> None:
    session, peer, _ = raw
    peer.send(f.DataFrame(7, b"who?"))
    assert await peer.recv() == f.RstStream(7, f.INVALID_STREAM)
    # in-flight data for a stream that existed and was reset is dropped silently
    peer.send(f.SynStream(9, {}))
    assert await peer.recv() == f.SynReply(9)
    stream = await session.accept()
    await stream.reset()
    assert await peer.recv() == f.RstStream(9, f.CANCEL)
    peer.send(f.DataFrame(9, b"late"), f.Ping(3))
    assert await peer.recv() == f.Ping(3)


async def test_settings_window_update_and_headers_are_ignored(raw: RawFixture) -> None:
    session, peer, _ = raw
    peer.send(f.SynStream(1, {}))
    assert await peer.recv() == f.SynReply(1)
    stream = await session.accept()
    peer.send(f.Settings(((0, 7, 1),)), f.WindowUpdate(1, 5), f.Headers(1, {"a": "b"}))
    peer.send(f.DataFrame(1, b"data"), f.Headers(1, {}, f.FLAG_FIN))
    assert await read_all(stream) == b"data"
    # no flow control: the server writes far beyond the 64 KiB initial window
    await asyncio.wait_for(stream.write(b"z" * 300_000), 5)


async def test_open_times_out_without_reply(raw: RawFixture) -> None:
    session, peer, _ = raw
    with pytest.raises(SpdyTimeout):
        await session.open({"streamtype": "data"}, timeout=0.2)
    assert await peer.recv() == f.SynStream(2, {"streamtype": "data"})
    assert await peer.recv() == f.RstStream(2, f.CANCEL)
    assert isinstance(SpdyTimeout("x"), TimeoutError)


async def test_ping_times_out(raw: RawFixture) -> None:
    session, _, _ = raw
    with pytest.raises(TimeoutError):
        await session.ping(timeout=0.1)


async def _expect_goaway(peer: RawPeer, status: int) -> None:
    frames = []
    while (frame := await peer.recv()) is not None:
        frames.append(frame)
    last = frames[-1]
    assert isinstance(last, f.GoAway)
    assert last.status == status


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,  # control frame of version 0x7fff
        b"\x80\x03\x00\x01\x00\xff\xff\xff" + b"\0" * 64,  # 16 MiB SYN_STREAM
        b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x00",  # PING id 0
        bytes.fromhex("80030002" + "00000004") + b"\0\0\0\x01",  # SYN_REPLY, bad block
    ],
)
async def test_garbage_closes_the_session_cleanly(raw: RawFixture, garbage: bytes) -> None:
    session, peer, run = raw
    peer.send(f.SynStream(1, {"streamtype": "stdin"}))
    assert await peer.recv() == f.SynReply(1)
    stream = await session.accept()
    peer.writer.write(garbage)
    await _expect_goaway(peer, f.GOAWAY_PROTOCOL_ERROR)
    await asyncio.wait_for(run, 5)  # no exception escapes run()
    assert session.closed
    assert await stream.read() == b""


async def test_eof_from_peer_ends_the_session(raw: RawFixture) -> None:
    session, peer, run = raw
    peer.send(f.SynStream(1, {}))
    assert await peer.recv() == f.SynReply(1)
    stream = await session.accept()
    peer.writer.write_eof()
    await asyncio.wait_for(run, 5)
    assert session.closed
    assert await stream.read() == b""


async def test_peer_goaway_ends_run(raw: RawFixture) -> None:
    session, peer, run = raw
    peer.send(f.GoAway(0))
    await asyncio.wait_for(run, 5)
    await _expect_goaway(peer, f.GOAWAY_OK)
    with pytest.raises(ConnectionError):
        await session.accept()


async def test_initial_data_is_processed_before_reading() -> None:
    (sr, sw), (cr, cw) = await socket_streams()
    early = f.FrameEncoder().encode(f.SynStream(1, {"streamtype": "error"}))
    session = SpdySession(sr, sw, server=True, initial_data=early)
    run = asyncio.create_task(session.run())
    try:
        stream = await asyncio.wait_for(session.accept(), 5)
        assert stream.headers == {"streamtype": "error"}
        peer = RawPeer(cr, cw, f.FrameEncoder(), f.FrameDecoder())
        assert await peer.recv() == f.SynReply(1)
    finally:
        await session.close()
        await asyncio.wait_for(run, 5)
        for w in (sw, cw):
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


async def test_one_huge_data_frame_is_delivered_in_bounded_pieces(raw: RawFixture) -> None:
    session, peer, _ = raw
    peer.send(f.SynStream(1, {"streamtype": "stdin"}))
    assert await peer.recv() == f.SynReply(1)
    stream = await session.accept()
    blob = os.urandom(3 << 20)
    peer.send(f.DataFrame(1, blob, f.FLAG_FIN))  # one 3 MiB wire frame
    pieces = []
    while chunk := await asyncio.wait_for(stream.read(), 5):
        assert stream.buffered <= 256 * 1024 + f.DATA_PIECE
        pieces.append(chunk)
    assert max(len(p) for p in pieces) <= f.DATA_PIECE
    assert b"".join(pieces) == blob

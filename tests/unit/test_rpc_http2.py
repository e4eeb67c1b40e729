"""podling.rpc at the HTTP/2 level, driven by the h2 library (an independent HTTP/2
implementation that enforces flow control and framing on what it receives) and by
hand-made bytes for what no well-behaved client sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from cri_api.v1 import api_pb2 as pb
from hpack import Encoder

from podling.rpc import frames
from podling.rpc.connection import Connection
from podling.rpc.server import Server
from tests.unit.rpc_support import PREFIX, Handlers, start


class Client:
    """One HTTP/2 connection to the server, through h2."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(cfg)
        self.events: list[Any] = []

    def send(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def until(self, kind: type, stream: int | None = None, ack: bool = True) -> Any:
        """Read until an event of `kind` (on `stream`) arrives; acknowledges data read."""
        while True:
            for e in self.events:
                if isinstance(e, kind) and (stream is None or e.stream_id == stream):
                    self.events.remove(e)
                    return e
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "the server closed the connection"
            for e in self.h2.receive_data(data):
                if ack and isinstance(e, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                self.events.append(e)
            self.send()

    def request(self, text: str, method: str = "Echo", **kw: Any) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", (PREFIX + method).encode()),
            (b":authority", b"localhost"),
            (b"content-type", kw.pop("content_type", b"application/grpc")),
            (b"te", b"trailers"),
            *kw.pop("extra", []),
        ]
        self.h2.send_headers(sid, headers)
        body = kw.pop("body", None)
        if body is None:
            msg = pb.VersionRequest(version=text).SerializeToString()
            body = b"\x00" + len(msg).to_bytes(4, "big") + msg
        self.h2.send_data(sid, body, end_stream=True, **kw)
        self.send()
        return sid

    async def reply(self, sid: int, most: int = 1 << 24) -> tuple[bytes, dict[bytes, bytes]]:
        """The DATA of stream `sid` (each frame at most `most` bytes), and its trailers."""
        body = b""
        while True:
            e = await self.until((h2.events.DataReceived, h2.events.TrailersReceived), sid)
            if isinstance(e, h2.events.TrailersReceived):
                return body, dict(e.headers)
            assert len(e.data) <= most
            body += e.data

    async def status(self, sid: int) -> tuple[int, str]:
        """The grpc-status and grpc-message that end stream `sid`."""
        while True:
            e = await self.until((h2.events.TrailersReceived, h2.events.ResponseReceived), sid)
            got = dict(e.headers)
            if b"grpc-status" in got:
                return int(got[b"grpc-status"]), got.get(b"grpc-message", b"").decode()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, Handlers, Path]]:
    handlers = Handlers()
    srv, sock = await start(tmp_path, handlers)
    yield srv, handlers, sock
    await srv.stop(0.2)


async def connect(sock: Path, settings: dict[int, int] | None = None) -> Client:
    client = Client(*await asyncio.open_unix_connection(str(sock)))
    client.h2.initiate_connection()
    if settings:
        client.h2.update_settings(settings)
    client.send()
    return client


async def raw(sock: Path, data: bytes) -> bytes:
    """What the server answers `data` with, up to its closing the connection."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(data)
    out = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 5):
        out += chunk
    writer.close()
    return out


def split_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The whole frames in `data`: (type, flags, stream id, payload)."""
    out = []
    while len(data) >= 9:
        end = 9 + int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:end]))
        data = data[end:]
    return out


def goaway_code(answer: bytes) -> int:
    found = [p for kind, _, _, p in split_frames(answer) if kind == frames.GOAWAY]
    assert found, "no GOAWAY"
    return int.from_bytes(found[0][4:8], "big")


def hand_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


async def test_ping_is_answered_with_its_payload(server: Any) -> None:
    client = await connect(server[2])
    client.h2.ping(b"12345678")
    client.send()
    ack = await client.until(h2.events.PingAckReceived)
    assert ack.ping_data == b"12345678"


async def test_a_tiny_client_window_is_never_overrun(server: Any) -> None:
    # h2 raises FlowControlError on any DATA beyond the window it granted
    client = await connect(server[2], {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    body, trailers = await client.reply(client.request("big:5000"), most=100)
    assert len(pb.VersionResponse.FromString(body[5:]).version) == 5000
    assert trailers[b"grpc-status"] == b"0"


async def test_a_reply_larger_than_a_frame_but_inside_the_window(server: Any) -> None:
    # one write, cut to the client's 16 KiB frames: h2 raises FrameTooLargeError on a
    # larger one
    client = await connect(server[2])
    body, trailers = await client.reply(client.request("big:40000"))
    assert pb.VersionResponse.FromString(body[5:]).version == "x" * 40000
    assert trailers[b"grpc-status"] == b"0"


async def test_headers_in_continuation_frames_and_padded_data(server: Any) -> None:
    client = await connect(server[2])
    sid = client.request("hi", extra=[(b"x-long", b"v" * 30000)], pad_length=20)
    assert await client.status(sid) == (0, "")


async def test_a_reset_stream_cancels_its_handler(server: Any) -> None:
    _, handlers, sock = server
    client = await connect(sock)
    sid = client.request("sleep:5")
    await asyncio.wait_for(handlers.started.wait(), 5)
    client.h2.reset_stream(sid)
    client.send()
    assert await handlers.wait_cancelled() == ["sleep:5"]
    assert await client.status(client.request("again")) == (0, "")


@pytest.mark.parametrize(
    ("kw", "code", "words"),
    [
        ({"body": b"\x00\x00\x00\x00\x00" * 2}, 3, "exactly one"),
        ({"body": b"\x00\x00\x00"}, 3, "no message"),
        ({"body": b"\x01\x00\x00\x00\x01x"}, 12, "compressed"),
        ({"body": b"\x00\x00\x00\x00\x02\xff\xff"}, 3, "not a valid"),
        ({"content_type": b"application/json"}, 3, "content-type"),
        ({"extra": [(b"grpc-encoding", b"gzip")]}, 12, "identity"),
        ({"extra": [(b"grpc-timeout", b"soon")]}, 3, "grpc-timeout"),
    ],
)
async def test_malformed_calls_get_a_status_saying_what_is_wrong(
    server: Any, kw: dict[str, Any], code: int, words: str
) -> None:
    client = await connect(server[2])
    got_code, message = await client.status(client.request("x", **kw))
    assert got_code == code and words in message


async def test_not_http2_is_refused_with_goaway(server: Any) -> None:
    answer = await raw(server[2], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert goaway_code(answer) == frames.PROTOCOL_ERROR


async def test_a_corrupt_header_block_ends_the_connection(server: Any) -> None:
    bad = hand_frame(frames.HEADERS, frames.END_HEADERS | frames.END_STREAM, 1, b"\xff\xff\xff")
    answer = await raw(server[2], frames.PREFACE + hand_frame(frames.SETTINGS, 0, 0, b"") + bad)
    assert goaway_code(answer) == frames.COMPRESSION_ERROR


async def test_a_client_may_not_open_even_streams(server: Any) -> None:
    block = Encoder().encode([(b":path", b"/x")])
    bad = hand_frame(frames.HEADERS, frames.END_HEADERS, 2, block)
    answer = await raw(server[2], frames.PREFACE + bad)
    assert goaway_code(answer) == frames.PROTOCOL_ERROR


async def test_oversized_frames_end_the_connection(server: Any) -> None:
    big = hand_frame(frames.DATA, 0, 1, b"x" * 20000)
    answer = await raw(server[2], frames.PREFACE + big)
    assert goaway_code(answer) == frames.FRAME_SIZE_ERROR


async def test_stop_says_goaway_to_idle_connections(server: Any) -> None:
    srv, _, sock = server
    client = await connect(sock)
    assert await client.status(client.request("hi")) == (0, "")
    await srv.stop(0.2)
    assert (await client.until(h2.events.ConnectionTerminated)).error_code == 0


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""

    def write(self, data: Any) -> None:
        self.sent += bytes(data)


def test_a_call_read_one_byte_at_a_time_is_answered_once() -> None:
    requests: list[Any] = []
    conn = Connection(requests.append, lambda s: None)
    transport = _Recorder()
    conn.connection_made(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    request = [
        (b":method", b"POST"),
        (b":path", b"/x"),
        (b":scheme", b"http"),
        (b":authority", b"x"),
    ]
    client.send_headers(1, request)
    client.send_data(1, b"\x00\x00\x00\x00\x03abc", end_stream=True)
    for byte in client.data_to_send():
        conn.data_received(bytes([byte]))
    assert [(s.id, s.headers[b":path"], bytes(s.body)) for s in requests] == [
        (1, b"/x", b"\x00\x00\x00\x00\x03abc")
    ]
    requests[0].respond(b"\x88", b"reply", b"\x88")  # ":status 200", as a pure block
    answer = [(kind, flags, sid) for kind, flags, sid, _ in split_frames(transport.sent)]
    assert answer[3:] == [
        (frames.HEADERS, frames.END_HEADERS, 1),
        (frames.DATA, 0, 1),
        (frames.HEADERS, frames.END_HEADERS | frames.END_STREAM, 1),
    ]
    assert conn.streams == {}


def test_remembered_header_blocks_never_outlive_a_table_change() -> None:
    conn = Connection(lambda s: None, lambda s: None)
    enc = Encoder()
    first = enc.encode([(b"x-a", b"1")])  # literal with indexing: dynamic index 62
    assert conn._decode(first) == {b"x-a": b"1"}
    ref = bytes([0x80 | 62])  # one-byte reference: pure, remembered
    assert conn._decode(ref) == {b"x-a": b"1"}
    assert conn._decode(ref) is conn._decode(ref)
    conn._decode(enc.encode([(b"x-b", b"2")]))  # index 62 is x-b now
    assert conn._decode(ref) == {b"x-b": b"2"}

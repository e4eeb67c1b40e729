"""The sans-I/O SPDY/3 codec: frame layouts, header blocks, zlib contexts, limits."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from podling.errors import InvalidArgument
from podling.streaming.spdy import frames as f
from podling.streaming.spdy.headers import (
    MAX_HEADER_BLOCK,
    SPDY3_DICTIONARY,
    HeaderCompressor,
    HeaderDecompressor,
    ProtocolError,
    pack_header_block,
    unpack_header_block,
)


def decode_all(data: bytes) -> list[f.Frame]:
    dec = f.FrameDecoder()
    dec.feed(data)
    return list(dec)


def raw_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """An uncompressed header block built by hand (may break the rules on purpose)."""
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def compress_raw(block: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=SPDY3_DICTIONARY)
    return z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)


def control(ftype: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    n = len(payload)
    return struct.pack(">HHB", 0x8000 | version, ftype, flags) + n.to_bytes(3, "big") + payload


# --- dictionary and compression ---


def test_dictionary_matches_the_spdy3_checksums() -> None:
    assert len(SPDY3_DICTIONARY) == 1423
    assert zlib.adler32(SPDY3_DICTIONARY) == 0xE3C6A7C2
    assert (
        hashlib.sha256(SPDY3_DICTIONARY).hexdigest()
        == "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )


def test_first_block_names_the_dictionary_and_every_block_is_sync_flushed() -> None:
    c = HeaderCompressor()
    first = c.compress({"streamtype": "error"})
    second = c.compress({"streamtype": "error"})
    assert first.startswith(bytes.fromhex("78f9e3c6a7c2"))  # zlib header with FDICT + dict id
    assert first.endswith(b"\x00\x00\xff\xff")
    assert second.endswith(b"\x00\x00\xff\xff")
    # the second block continues the stream: no zlib header, and it back-references the first
    assert not second.startswith(b"\x78")
    assert len(second) < len(first)


def test_zlib_context_continues_across_blocks_in_one_direction() -> None:
    enc, dec = f.FrameEncoder(), f.FrameDecoder()
    sent: list[f.Frame] = [
        f.SynStream(1, {"streamtype": "error", "port": "8080", "requestid": "0"}),
        f.SynReply(1),
        f.SynStream(3, {"streamtype": "data", "port": "8080", "requestid": "0"}),
        f.Headers(3, {"x": "y"}),
        f.SynStream(5, {"streamtype": "error", "port": "8080", "requestid": "1"}),
    ]
    wire = [enc.encode(fr) for fr in sent]
    for raw in wire:
        dec.feed(raw)
    assert list(dec) == sent
    # a later block cannot be read without the context that preceded it
    fresh = f.FrameDecoder()
    fresh.feed(wire[2])
    with pytest.raises(ProtocolError):
        fresh.next_frame()


def test_header_names_are_lowercased_and_multi_values_kept() -> None:
    block = pack_header_block({"StreamType": "stdout", "X-Multi": "a\0b"})
    assert unpack_header_block(block) == {"streamtype": "stdout", "x-multi": "a\0b"}
    # names colliding after lowercasing merge into one NUL-joined value
    assert unpack_header_block(pack_header_block({"A": "1", "a": "2"})) == {"a": "1\x002"}


def test_empty_header_block_is_a_zero_count() -> None:
    assert pack_header_block({}) == b"\0\0\0\0"
    assert unpack_header_block(b"\0\0\0\0") == {}


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (raw_block([(b"Upper", b"x")]), "not lowercase"),
        (raw_block([(b"a", b"1"), (b"a", b"2")]), "duplicate"),
        (raw_block([(b"", b"x")]), "empty header name"),
        (raw_block([(b"a", b"1")]) + b"junk", "trailing"),
        (raw_block([(b"a", b"1")])[:-1], "truncated"),
        (struct.pack(">I", 1_000_000), "claims"),
        (b"\0\0", "shorter"),
    ],
)
def test_bad_header_blocks_are_protocol_errors(block: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        HeaderDecompressor().decompress(compress_raw(block))


def test_header_block_bomb_is_refused() -> None:
    huge = raw_block([(b"x", b"a" * (MAX_HEADER_BLOCK + 10))])
    payload = compress_raw(huge)
    assert len(payload) < 10_000  # tiny on the wire, over 1 MiB inflated
    with pytest.raises(ProtocolError, match="inflates beyond"):
        HeaderDecompressor().decompress(payload)


def test_garbage_compressed_block_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="does not decompress"):
        HeaderDecompressor().decompress(b"\x01\x02\x03\x04garbage")


# --- hand-written byte examples (streaming.md 4.2) ---


def test_ping_bytes() -> None:
    wire = bytes.fromhex("800300060000000400000001")
    assert f.FrameEncoder().encode(f.Ping(1)) == wire
    assert decode_all(wire) == [f.Ping(1)]


def test_empty_data_fin_bytes() -> None:
    wire = bytes.fromhex("0000000501000000")
    assert f.FrameEncoder().encode(f.DataFrame(5, b"", f.FLAG_FIN)) == wire
    (frame,) = decode_all(wire)
    assert frame == f.DataFrame(5, b"", f.FLAG_FIN)
    assert isinstance(frame, f.DataFrame) and frame.fin


def test_rst_stream_cancel_bytes() -> None:
    wire = bytes.fromhex("80030003000000080000000300000005")
    assert f.FrameEncoder().encode(f.RstStream(3, f.CANCEL)) == wire
    assert decode_all(wire) == [f.RstStream(3, f.CANCEL)]


def test_goaway_bytes() -> None:
    wire = bytes.fromhex("80030007000000080000000900000000")
    assert f.FrameEncoder().encode(f.GoAway(9, f.GOAWAY_OK)) == wire
    assert decode_all(wire) == [f.GoAway(9, f.GOAWAY_OK)]


def test_syn_reply_bytes() -> None:
    block = compress_raw(b"\0\0\0\0")  # empty header block, first in its context
    wire = control(2, b"\0\0\0\x01" + block)
    assert wire[:8] == bytes([0x80, 3, 0, 2, 0]) + (4 + len(block)).to_bytes(3, "big")
    assert f.FrameEncoder().encode(f.SynReply(1)) == wire
    assert decode_all(wire) == [f.SynReply(1)]


def test_data_frame_header_layout() -> None:
    wire = f.FrameEncoder().encode(f.DataFrame(0x12345, b"hello"))
    assert wire == bytes.fromhex("00012345" + "00" + "000005") + b"hello"


def test_reserved_bits_are_masked_on_read() -> None:
    wire = control(3, struct.pack(">II", 0x80000003, f.CANCEL))
    assert decode_all(wire) == [f.RstStream(3, f.CANCEL)]


# --- round trips ---

ALL_FRAMES: list[f.Frame] = [
    f.DataFrame(1, b"payload"),
    f.DataFrame(3, b"", f.FLAG_FIN),
    f.SynStream(
        7,
        {"streamtype": "stdin", "multi": "a\0b"},
        f.FLAG_FIN | f.FLAG_UNIDIRECTIONAL,
        assoc_stream_id=5,
        priority=6,
        slot=9,
    ),
    f.SynReply(7, {"status": "ok"}, f.FLAG_FIN),
    f.Headers(7, {"k": "v"}),
    f.RstStream(7, f.REFUSED_STREAM),
    f.Settings(((0, 4, 100), (1, 7, 65536)), f.FLAG_SETTINGS_CLEAR),
    f.Settings(),
    f.Ping(0xFFFFFFFF),
    f.GoAway(7, f.GOAWAY_PROTOCOL_ERROR),
    f.WindowUpdate(7, 1 << 20),
]


def test_every_frame_type_round_trips() -> None:
    enc = f.FrameEncoder()
    wire = b"".join(enc.encode(fr) for fr in ALL_FRAMES)
    assert decode_all(wire) == ALL_FRAMES


def test_byte_by_byte_decoding_gives_the_same_frames() -> None:
    enc = f.FrameEncoder()
    wire = b"".join(enc.encode(fr) for fr in ALL_FRAMES)
    dec = f.FrameDecoder()
    got: list[f.Frame] = []
    for i in range(len(wire)):
        dec.feed(wire[i : i + 1])
        got += list(dec)
    assert got == ALL_FRAMES


def test_incomplete_input_waits() -> None:
    wire = f.FrameEncoder().encode(f.GoAway(1))
    dec = f.FrameDecoder()
    dec.feed(wire[:-1])
    assert dec.next_frame() is None
    dec.feed(wire[-1:])
    assert dec.next_frame() == f.GoAway(1)
    assert dec.next_frame() is None


def test_large_data_frame_comes_out_in_bounded_pieces() -> None:
    body = bytes(range(256)) * 800  # 200 KiB
    wire = f.FrameEncoder().encode(f.DataFrame(9, body, f.FLAG_FIN))
    dec = f.FrameDecoder()
    pieces: list[f.Frame] = []
    for i in range(0, len(wire), 1000):
        dec.feed(wire[i : i + 1000])
        pieces += list(dec)
    assert all(isinstance(p, f.DataFrame) and p.stream_id == 9 for p in pieces)
    datas = [p for p in pieces if isinstance(p, f.DataFrame)]
    assert len(datas) > 1
    assert all(len(p.data) == f.DATA_PIECE for p in datas[:-1])
    assert b"".join(p.data for p in datas) == body
    assert [p.fin for p in datas] == [False] * (len(datas) - 1) + [True]


def test_unknown_control_types_are_skipped() -> None:
    wire = control(10, b"credential stuff") + control(6, b"\0\0\0\x03")
    assert decode_all(wire) == [f.Ping(3)]


# --- malformed input ---


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (control(6, b"\0\0\0\x01", version=2), "version"),
        (bytes.fromhex("00000000" + "00000001") + b"x", "DATA frame on stream 0"),
        (control(6, b"\0\0\0\0"), "PING with id 0"),
        (control(6, b"\0\0\0\x01\0"), "PING frame has length"),
        (control(3, struct.pack(">II", 1, 0)), "status 0"),
        (control(3, struct.pack(">II", 0, 5)), "stream 0"),
        (control(3, b"\0\0\0\x01\0\0\0"), "RST_STREAM frame has length"),
        (control(7, b"\0\0\0\x01"), "GOAWAY frame has length"),
        (control(9, b"\0\0\0\x01\0\0\0\x01\0"), "WINDOW_UPDATE frame has length"),
        (control(4, struct.pack(">I", 2) + b"\0" * 8), "SETTINGS frame has length"),
        (control(4, b"\0\0"), "SETTINGS frame too short"),
        (control(1, b"\0\0\0\x01\0\0"), "SYN_STREAM frame too short"),
        (control(1, b"\0" * 10 + compress_raw(b"\0\0\0\0")), "SYN_STREAM frame on stream 0"),
        (control(2, b"\0\0"), "SYN_REPLY frame too short"),
        (control(2, b"\0\0\0\x01" + b"not zlib"), "does not decompress"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_all(wire)


def test_oversized_control_frame_is_refused_before_its_payload_arrives() -> None:
    head = struct.pack(">HHB", 0x8003, 1, 0) + (f.MAX_CONTROL_LENGTH + 1).to_bytes(3, "big")
    dec = f.FrameDecoder()
    dec.feed(head)
    with pytest.raises(ProtocolError, match="exceeds our limit"):
        dec.next_frame()


def test_encoder_rejects_invalid_frames() -> None:
    enc = f.FrameEncoder()
    with pytest.raises(InvalidArgument):
        enc.encode(f.DataFrame(0, b"x"))
    with pytest.raises(InvalidArgument):
        enc.encode(f.SynStream(1 << 31))
    with pytest.raises(InvalidArgument):
        f.encode_data(1, b"\0" * (f.MAX_FRAME_LENGTH + 1))

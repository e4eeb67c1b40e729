"""SPDY/3 header blocks: the name/value block format and its zlib contexts.

A header block on the wire is `count(32)` then `count` pairs of
`name-len(32) name value-len(32) value`, all big-endian, compressed with zlib
(RFC 1950) using the SPDY/3 preset dictionary. Each direction of a connection
has ONE compression context: every block continues the same deflate stream and
ends with a sync flush, so blocks must be compressed in exactly the order their
frames reach the wire, and decompressed in arrival order.

Names are lowercase on the wire; several values of one name travel as one value
joined by NUL bytes (kept as is here). Strings are UTF-8 with surrogateescape so
any byte sequence round-trips.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from podling.errors import InvalidArgument

# A decompressed header block larger than this is refused: a few hundred bytes
# is what Kubernetes clients send, and zlib can inflate ~1000x.
MAX_HEADER_BLOCK = 1 << 20

_U32 = struct.Struct(">I")


class ProtocolError(InvalidArgument):
    """The peer sent bytes that are not valid SPDY/3; the connection must end.

    `status` is the GOAWAY status to answer with (PROTOCOL_ERROR by default).
    """

    def __init__(self, message: str, status: int = 1) -> None:  # 1 = GOAWAY PROTOCOL_ERROR
        super().__init__(f"SPDY protocol error from peer: {message}")
        self.status = status


# The dictionary's length-prefixed words, in order ("200 OK" is inserted before
# "version" because it contains a space).
_DICT_WORDS = """
options head post put delete trace accept accept-charset accept-encoding accept-language
accept-ranges age allow authorization cache-control connection content-base
content-encoding content-language content-length content-location content-md5
content-range content-type date etag expect expires from host if-match
if-modified-since if-none-match if-range if-unmodified-since last-modified location
max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after
server te trailer transfer-encoding upgrade user-agent vary via warning
www-authenticate method get status version HTTP/1.1 url public set-cookie keep-alive
origin
"""


def _build_dictionary() -> bytes:
    """The SPDY/3 zlib dictionary (draft 3, section 2.6.10.1): length-prefixed
    words followed by a raw tail of status codes, dates and MIME fragments."""
    words = _DICT_WORDS.split()
    words.insert(words.index("version"), "200 OK")  # the only entry with a space
    tail = (
        b"100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        b"502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        b"400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        b"501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct"
        b" Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        b"image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        b"text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        b"charset=iso-8859-1,utf-,*,enq=0."
    )
    prefixed = b"".join(_U32.pack(len(w)) + w.encode("ascii") for w in words)
    return prefixed + tail


SPDY3_DICTIONARY = _build_dictionary()
SPDY3_DICTIONARY_ADLER32 = 0xE3C6A7C2


def normalize_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lowercase the names; names that collide after lowercasing are merged with NUL."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if not low:
            raise InvalidArgument("SPDY header names must not be empty")
        out[low] = f"{out[low]}\0{value}" if low in out else value
    return out


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def pack_header_block(headers: Mapping[str, str]) -> bytes:
    """The uncompressed name/value block; names are lowercased (see normalize_headers)."""
    names = normalize_headers(headers)
    parts = [_U32.pack(len(names))]
    for name, value in names.items():
        n, v = _raw(name), _raw(value)
        parts += [_U32.pack(len(n)), n, _U32.pack(len(v)), v]
    return b"".join(parts)


def unpack_header_block(block: bytes) -> dict[str, str]:
    """Parse an uncompressed block. Uppercase or duplicate names, empty names and
    trailing or missing bytes raise ProtocolError (the Go reader is as strict)."""
    if len(block) < 4:
        raise ProtocolError("header block shorter than its count field")
    (count,) = _U32.unpack_from(block, 0)
    # every pair needs at least 8 length bytes: reject absurd counts before looping
    if count * 8 > len(block) - 4:
        raise ProtocolError(f"header block claims {count} headers but is {len(block)} bytes")
    pos, out = 4, {}
    for _ in range(count):
        name, pos = _field(block, pos)
        value, pos = _field(block, pos)
        if not name:
            raise ProtocolError("empty header name")
        text = _text(name)
        if text.lower() != text:
            raise ProtocolError(f"header name {text!r} is not lowercase")
        if text in out:
            raise ProtocolError(f"duplicate header name {text!r}")
        out[text] = _text(value)
    if pos != len(block):
        raise ProtocolError("trailing bytes after the last header")
    return out


def _field(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(block):
        raise ProtocolError("header block truncated in a length field")
    (size,) = _U32.unpack_from(block, pos)
    end = pos + 4 + size
    if end > len(block):
        raise ProtocolError("header block truncated in a name or value")
    return block[pos + 4 : end], end


class HeaderCompressor:
    """The sending direction's zlib context. Not thread-safe; callers serialise
    compress + write so that blocks hit the wire in compression order."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=SPDY3_DICTIONARY
        )

    def compress(self, headers: Mapping[str, str]) -> bytes:
        """One header block, sync-flushed (ends in 00 00 ff ff)."""
        block = pack_header_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The receiving direction's zlib context: feed every header block in arrival order."""

    def __init__(self, max_block: int = MAX_HEADER_BLOCK) -> None:
        self._z = zlib.decompressobj(15, zdict=SPDY3_DICTIONARY)
        self._max = max_block

    def decompress(self, payload: bytes) -> dict[str, str]:
        """Inflate and parse one block; raise ProtocolError on bad zlib data, a block
        over the size cap, or a block the parser rejects."""
        try:
            block = self._z.decompress(payload, self._max + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from None
        if len(block) > self._max or self._z.unconsumed_tail:
            raise ProtocolError(f"header block inflates beyond {self._max} bytes")
        if self._z.eof:
            # a final deflate block ends the context: no later block could be read
            raise ProtocolError("header compression stream was terminated by the peer")
        return unpack_header_block(block)

"""Replies built from pod and container records, cached per record as wire bytes.

The kubelet polls ListContainers and ListPodSandbox every second and the status RPCs
per pod. Building one pb.Container or pb.PodSandbox from a record (parsing the stored
config, copying its label and annotation maps) costs 10-15 µs, and nearly every record is
unchanged since the previous poll, so rebuilding them all on each call was most of a
list's cost (docs/performance.md).

Contracts:

- Never stale. An entry is keyed on the values of *every* record field its builder reads
  (`fields`), compared on each lookup: a changed state, timestamp, exit code, IP... rebuilds
  it. There is no invalidation call anyone could forget. The unit tests check that each
  builder reads no field outside its list.
- Never shared. An entry holds bytes only: the handlers return them as the reply itself
  (podling's server sends bytes as they are), or parse a new message from them to add to
  (verbose status), so nothing done to one reply reaches the cache or another reply.
- Bounded. `retain` (called by unfiltered lists, which see every live id) drops the entries
  of removed records. Without lists, a lookup that grows the cache past max(64, twice its
  size after the last sweep) sweeps it against `live_ids()`: removed records' entries
  never pile up.
- Event loop only: no lock, as every RPC handler runs on the loop's thread.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.message import Message

_MIN_LIMIT = 64  # entries allowed before the first sweep
_LENGTH_DELIMITED = 2  # protobuf wire type of a message field


class _Record(Protocol):
    id: str


R = TypeVar("R", bound=_Record)
M = TypeVar("M", bound=Message)


def varint(n: int) -> bytes:
    """`n` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_number(message: type[Message], name: str) -> int:
    """The field number of `name` in `message` (the reply field the cache encodes)."""
    return int(message.DESCRIPTOR.fields_by_name[name].number)


class ReplyCache(Generic[R]):
    """Per record id: `build(rec)` serialized as field `number` of a reply message.

    `fields` must name every attribute of the record that `build` reads.
    """

    def __init__(
        self,
        build: Callable[[R], Message],
        fields: Sequence[str],
        number: int,
        live_ids: Callable[[], Collection[str]],
    ) -> None:
        if len(fields) < 2:
            raise ValueError("a reply cache key needs at least two fields (id and more)")
        self._build = build
        self._key: Callable[[R], tuple[Any, ...]] = operator.attrgetter(*fields)
        self._tag = varint(number << 3 | _LENGTH_DELIMITED)
        self._live_ids = live_ids
        self._entries: dict[str, tuple[tuple[Any, ...], bytes]] = {}
        self._limit = _MIN_LIMIT

    def __len__(self) -> int:
        return len(self._entries)

    def field(self, rec: R) -> bytes:
        """`build(rec)` as one field of the reply on the wire (tag, length, message).

        Concatenated fields parse as a repeated field (`Reply.FromString(b"".join(...))`).
        """
        key = self._key(rec)
        hit = self._entries.get(rec.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        body = self._build(rec).SerializeToString()
        wire = self._tag + varint(len(body)) + body
        self._entries[rec.id] = (key, wire)
        if len(self._entries) > self._limit:
            self._sweep(self._live_ids())
        return wire

    def retain(self, live: Collection[str]) -> None:
        """Drop the entries of records not in `live` (every id that still exists).

        O(1) unless some entry is stale: the cache holds at most one entry per live id,
        so it can only be larger than `live` if it holds a removed record's.
        """
        if len(self._entries) > len(live):
            self._sweep(live)

    def _sweep(self, live: Collection[str]) -> None:
        keep = live if isinstance(live, (set, frozenset, dict)) else set(live)
        self._entries = {i: e for i, e in self._entries.items() if i in keep}
        self._limit = max(_MIN_LIMIT, 2 * len(self._entries))


class ListCache:
    """Whole list replies by request (its wire bytes), valid for one store generation.

    The kubelet lists every second and nothing changed since the last time far more
    often than not: then the whole reply is the one built last time. Any write to the
    store moves its generation and empties this cache, so it is never stale; it holds
    at most `size` distinct requests (filters) at a time.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._generation = -1
        self._replies: dict[bytes, bytes] = {}

    def answer(self, generation: int, request: M, build: Callable[[M], bytes]) -> bytes:
        """The reply to `request` at store `generation`: remembered, or `build(request)`."""
        key = request.SerializeToString()
        if generation == self._generation:
            wire = self._replies.get(key)
            if wire is not None:
                return wire
        else:
            self._replies.clear()
            self._generation = generation
        wire = build(request)
        if len(self._replies) >= self._size:
            self._replies.clear()
        self._replies[key] = wire
        return wire

"""Rebuild a layer tar byte for byte from Docker's tar-split metadata and a diff directory.

When Docker applies a layer it keeps `tar-split.json.gz` beside the layer db entry: gzipped,
newline-delimited JSON, one entry per line, in stream order:

  {"type": 2, "payload": "<base64>", "position": N}   raw bytes of the original stream
                                                      (headers, padding, end blocks)
  {"type": 1, "name": "etc/passwd", "size": 42, "payload": "<base64 crc64>", "position": N}
                                                      a member's content: `size` bytes taken
                                                      from the file `name` in the diff dir

`name_raw` (base64) replaces `name` for names that are not UTF-8. The payload of a file
entry is the big-endian CRC-64 (ISO polynomial) of the content; it is null for empty files.

Contract: `assemble` writes the reassembled stream and returns its sha256 digest; the
caller compares that with the recorded diff id, which is the real verification. File
contents are only ever read from regular files inside the diff dir (a name that is
absolute after cleaning, climbs out with '..' or resolves through a symlink to outside is
refused with UnsafeContent). A missing file or one of the wrong size raises DataLoss
naming it. `find_damaged` re-reads the contents with the CRC-64 check, to name the file
responsible after a digest mismatch (the CRC is slow in Python, so it is not on the fast
path).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from podling.errors import DataLoss, InvalidArgument, UnsafeContent

FILE_TYPE = 1
SEGMENT_TYPE = 2
_CHUNK = 1 << 20
_CRC64_ISO_POLY = 0xD800000000000000
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Entry:
    """One tar-split entry: raw stream bytes (segment) or a file's content reference."""

    type: int
    name: str = ""
    size: int = 0
    payload: bytes = b""


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC64_ISO_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc64_iso(data: bytes, crc: int = 0) -> int:
    """CRC-64/ISO as Go's hash/crc64 computes it; pass the previous value to continue."""
    crc = ~crc & _MASK64
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return ~crc & _MASK64


def _decode_entry(line: bytes, where: str) -> Entry:
    try:
        doc: Any = json.loads(line)
        kind = doc["type"]
        payload = base64.b64decode(doc.get("payload") or "", validate=True)
        raw = doc.get("name_raw")
        name = os.fsdecode(base64.b64decode(raw)) if raw else str(doc.get("name") or "")
        size = int(doc.get("size") or 0)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise InvalidArgument(f"{where}: malformed tar-split entry ({e})") from e
    if kind not in (FILE_TYPE, SEGMENT_TYPE) or size < 0:
        raise InvalidArgument(f"{where}: unknown tar-split entry type {kind!r} or bad size")
    return Entry(kind, name, size, payload)


def read_entries(path: Path) -> Iterator[Entry]:
    """The entries of a tar-split.json.gz file, in order; InvalidArgument if malformed."""
    try:
        with gzip.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield _decode_entry(line, str(path))
    except (OSError, EOFError, zlib.error) as e:
        raise InvalidArgument(f"{path}: cannot read tar-split metadata: {e}") from e


def _member_path(diff_dir: Path, name: str) -> Path:
    """The regular file inside `diff_dir` that holds member `name`'s content."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeContent(f"{diff_dir}: tar-split names unsafe path {name!r}; refusing layer")
    path = diff_dir.joinpath(*parts)
    real, root = os.path.realpath(path), os.path.realpath(diff_dir)
    if os.path.commonpath([real, root]) != root:
        raise UnsafeContent(f"{diff_dir}: {name!r} resolves outside the layer; refusing layer")
    return Path(real)


def _open_member(diff_dir: Path, entry: Entry) -> IO[bytes]:
    path = _member_path(diff_dir, entry.name)
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as e:
        raise DataLoss(
            f"layer file {entry.name!r} is missing or unreadable in {diff_dir}: {e.strerror}"
        ) from e
    st = os.fstat(f.fileno())
    if not _is_regular(st.st_mode) or st.st_size != entry.size:
        f.close()
        raise DataLoss(
            f"layer file {entry.name!r} in {diff_dir} has {st.st_size} bytes, "
            f"but the layer recorded {entry.size}: the layer was modified after it was applied"
        )
    return f


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def assemble(entries: Iterator[Entry], diff_dir: Path, out: IO[bytes] | None) -> str:
    """Write the original layer tar to `out` (None: only hash it); return its sha256."""
    h = hashlib.sha256()

    def emit(data: bytes) -> None:
        h.update(data)
        if out is not None:
            out.write(data)

    for entry in entries:
        if entry.type == SEGMENT_TYPE:
            emit(entry.payload)
        elif entry.size > 0:
            with _open_member(diff_dir, entry) as f:
                left = entry.size
                while left and (chunk := f.read(min(_CHUNK, left))):
                    emit(chunk)
                    left -= len(chunk)
    return "sha256:" + h.hexdigest()


def find_damaged(entries: Iterator[Entry], diff_dir: Path) -> str | None:
    """The first member whose content fails its CRC-64 (or is missing), or None."""
    for entry in entries:
        if entry.type != FILE_TYPE or entry.size == 0:
            continue
        try:
            with _open_member(diff_dir, entry) as f:
                crc = 0
                while chunk := f.read(_CHUNK):
                    crc = crc64_iso(chunk, crc)
        except DataLoss:
            return entry.name
        if entry.payload and crc.to_bytes(8, "big") != entry.payload:
            return entry.name
    return None

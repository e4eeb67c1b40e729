"""Content-addressed blob store: every blob is verified by digest and size before it is visible.

Layout under the store root:
  blobs/sha256/<hex>   committed, verified blobs (read-only from then on)
  ingest/<hex>         partial downloads; kept across failures so a later pull resumes,
                       removed once untouched for a day (prune_ingests)

A blob becomes visible only through `Ingest.commit()`, which checks the size and the
sha256 digest and renames the file into place atomically. A mismatch deletes the partial
file and raises DataLoss, so nothing unverified is ever used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from podling.diskspace import space_checked
from podling.errors import DataLoss, InvalidArgument

_DIGEST_RE = re.compile(r"^sha256:([a-f0-9]{64})$")
_CHUNK = 1 << 20


def digest_hex(digest: str) -> str:
    """Return the hex part of a sha256 digest; InvalidArgument for anything else."""
    m = _DIGEST_RE.match(digest)
    if m is None:
        raise InvalidArgument(
            f"unsupported or malformed digest {digest!r}: expected sha256:<64 hex>"
        )
    return m.group(1)


def hash_stream(f: IO[bytes]) -> str:
    """The sha256 digest of everything left in `f`, read in chunks."""
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Ingest:
    """A resumable write of one blob. `offset` is how many bytes are already on disk.

    The running hash is rebuilt from the bytes already written, so a resumed
    download continues exactly where the last one stopped.
    """

    def __init__(self, store: ContentStore, digest: str, size: int | None) -> None:
        self._store = store
        self.digest = digest
        self.expected_size = size
        self.path = store.root / "ingest" / digest_hex(digest)
        self._hash = hashlib.sha256()
        self.offset = 0
        if self.path.exists():
            with self.path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    self._hash.update(chunk)
                    self.offset += len(chunk)
        if size is not None and self.offset > size:
            self.reset()
        with self._space_checked():
            self._file = self.path.open("ab")

    def _space_checked(self) -> AbstractContextManager[None]:
        """A full disk while writing this blob: ResourceExhausted naming the store."""
        return space_checked(self._store.root, f"storing blob {self.digest}")

    def reset(self) -> None:
        """Throw away what was written (e.g. the server ignored a Range request)."""
        if hasattr(self, "_file"):
            self._file.close()
        self.path.unlink(missing_ok=True)
        self._hash = hashlib.sha256()
        self.offset = 0
        self._file = self.path.open("ab")

    def write(self, chunk: bytes) -> None:
        if self.expected_size is not None and self.offset + len(chunk) > self.expected_size:
            self.abort()
            raise DataLoss(
                f"blob {self.digest} is larger than the {self.expected_size} bytes its "
                "descriptor declares"
            )
        with self._space_checked():
            self._file.write(chunk)
        self._hash.update(chunk)
        self.offset += len(chunk)

    def commit(self) -> Path:
        """Verify size and digest, then make the blob visible. DataLoss on mismatch;
        ResourceExhausted when the last bytes do not fit (the partial file stays)."""
        with self._space_checked():
            self._file.close()
        actual = "sha256:" + self._hash.hexdigest()
        if self.expected_size is not None and self.offset != self.expected_size:
            self.path.unlink(missing_ok=True)
            raise DataLoss(
                f"blob {self.digest}: got {self.offset} bytes, descriptor says {self.expected_size}"
            )
        if actual != self.digest:
            self.path.unlink(missing_ok=True)
            raise DataLoss(f"blob {self.digest} does not match its digest (content is {actual})")
        final = self._store.path(self.digest)
        os.chmod(self.path, 0o444)
        os.replace(self.path, final)
        return final

    def close(self) -> None:
        """Stop writing but keep the partial file, so a later ingest resumes from it.

        Bytes still buffered that no longer fit (a full disk) are dropped: the file on
        disk stays a correct prefix of the blob, and a resume re-reads it from disk."""
        with contextlib.suppress(OSError):
            self._file.close()

    def abort(self) -> None:
        """Stop writing and delete the partial file."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


class ContentStore:
    """Blobs by digest under `root`. Thread-safe for distinct digests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "ingest").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def ingest(self, digest: str, size: int | None) -> Ingest:
        """Open (or resume) the ingest of `digest`; the caller must commit, close or abort it."""
        return Ingest(self, digest, size)

    def prune_ingests(self, max_age: float, now: float) -> list[str]:
        """Delete partial downloads not written to for `max_age` seconds (a pull that
        failed and was never retried); returns their names. A download in progress
        writes every few seconds, so it is never old enough."""
        gone = []
        for entry in os.scandir(self.root / "ingest"):
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > max_age:
                    os.unlink(entry.path)
                    gone.append(entry.name)
        return gone

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store `data`; if `digest` is given it must match (DataLoss otherwise)."""
        want = digest or sha256_digest(data)
        if self.has(want):
            return want
        ing = self.ingest(want, len(data))
        ing.reset()
        ing.write(data)
        ing.commit()
        return want

    def put_stream(self, f: IO[bytes], digest: str, size: int | None) -> str:
        """Copy a stream in as `digest` (verified; DataLoss on mismatch, nothing kept).
        Nothing is read if the blob is already stored."""
        if self.has(digest):
            return digest
        ing = self.ingest(digest, size)
        try:
            ing.reset()
            while chunk := f.read(_CHUNK):
                ing.write(chunk)
            ing.commit()
        except BaseException:
            ing.abort()
            raise
        return digest

    def put_file(self, src: Path, digest: str | None = None) -> str:
        """Copy a file in, verifying `digest` if given; returns the digest."""
        if digest is None:
            with src.open("rb") as f:
                digest = hash_stream(f)
        with src.open("rb") as f:
            return self.put_stream(f, digest, src.stat().st_size)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for p in (self.root / "blobs" / "sha256").iterdir():
            yield "sha256:" + p.name

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) used by committed and partial blobs."""
        total, inodes = 0, 0
        for sub in ("blobs/sha256", "ingest"):
            for p in (self.root / sub).iterdir():
                total += p.stat().st_size
                inodes += 1
        return total, inodes

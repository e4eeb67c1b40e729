"""OCI distribution (registry v2) client: resolve a reference, fetch verified blobs.

Protocol facts (OCI distribution spec v2): manifests are at
`GET /v2/<repo>/manifests/<tag|digest>`, blobs at `GET /v2/<repo>/blobs/<digest>`;
`Docker-Content-Digest` names the digest of the manifest bytes served; blob GETs may
redirect to storage elsewhere and honour `Range` for resuming.

Endpoints per registry host (see registry_endpoints): configured mirrors in order, then
the upstream (unless `skip_upstream`). Pull credentials belong to the upstream registry
and are never sent to mirrors (containerd does the same); mirrors are spoken to
anonymously or with whatever Bearer token their own token service hands out anonymously.

Every byte is verified: manifests against the digest they were requested by (or the
digest header), blobs through ContentStore.Ingest.commit(). A stalled blob download
keeps its partial ingest so the next attempt resumes with a Range request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from podling.errors import DataLoss, DeadlineExceeded, InvalidArgument, PodlingError, Unavailable
from podling.image.auth import Authenticator, Credentials
from podling.image.content import ContentStore, Ingest, digest_hex, sha256_digest
from podling.image.http import HttpClient, HttpError, Response
from podling.image.manifest import ACCEPT, Descriptor, Index, Manifest, parse, select_platform
from podling.image.registry_endpoints import Endpoint, HostConfig, endpoints_for, normalize_hosts
from podling.image.registry_errors import combined_error, describe, network_errors, status_error
from podling.keyedlock import KeyedLocks

if TYPE_CHECKING:
    from podling.image.reference import Reference

__all__ = ["Credentials", "HostConfig", "ProgressFn", "RegistryClient", "Resolved"]

MANIFEST_LIMIT = 4 << 20  # larger "manifests" are hostile or broken; no real one comes close
_CHUNK = 64 << 10
_PROGRESS_STEP = 1 << 20
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

ProgressFn = Callable[[str, int, int], None]  # (digest, bytes_done, total)


@dataclass(frozen=True)
class Resolved:
    """Where a reference resolved and to what; feed it back to `fetch_blob`."""

    endpoint: str  # base URL that served the manifest (mirror or upstream)
    repository: str  # path on that endpoint, e.g. "library/busybox"
    manifest_digest: str  # digest of the platform manifest actually used
    manifest: Manifest
    index_digest: str | None  # digest of the index if the reference resolved to one
    repo_digest_target: str  # what `name@digest` must resolve to: index digest, else manifest
    registry_host: str = ""  # the registry the reference names (for a mirror's ?ns=)
    mirror: bool = False  # endpoint is a mirror: no pull credentials are sent to it
    manifest_bytes: bytes = b""  # the verified bytes of manifest_digest, to store as-is
    index_bytes: bytes | None = None  # the verified bytes of index_digest, if any


class RegistryClient:
    """Talks the distribution API to registries. Create and use inside one event loop."""

    def __init__(
        self,
        hosts: Mapping[str, HostConfig],
        *,
        stall_timeout: float,
        connect_timeout: float = 10.0,
        user_agent: str = "podling",
    ) -> None:
        self._hosts = normalize_hosts(hosts)
        self._stall = stall_timeout
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._session: HttpClient | None = None
        self._auth = Authenticator()
        # serialise downloads of one digest: two writers on one ingest file would corrupt it
        self._blob_locks: KeyedLocks[str] = KeyedLocks()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def set_hosts(self, hosts: Mapping[str, HostConfig]) -> None:
        """Replace the per-host settings (a config reload). A resolve or blob download in
        flight keeps the endpoints it started with; the next one uses these.
        ConfigError (and no change) for a mirror that is not an http(s) URL."""
        self._hosts = normalize_hosts(hosts)

    def endpoints(self, host: str) -> list[Endpoint]:
        """The endpoints tried for `host`, in order: mirrors, then upstream."""
        return endpoints_for(host, self._hosts.get(host, HostConfig()))

    def _http(self) -> HttpClient:
        # Made on first use, inside the running loop. Bodies are never decoded (the client
        # asks for "identity"): blobs must arrive byte-exact for digest checks.
        if self._session is None:
            self._session = HttpClient(
                user_agent=self._user_agent,
                connect_timeout=self._connect_timeout,
                read_timeout=self._stall,
            )
        return self._session

    # ---- resolve -----------------------------------------------------------------

    async def resolve(self, ref: Reference, creds: Credentials | None) -> Resolved:
        """Find the manifest for `ref` (this host's platform if it names an index).

        NotFound / Unauthenticated / Unavailable / DataLoss according to the last
        endpoint tried; the message lists every endpoint and why each failed.
        """
        if ref.digest is not None:
            digest_hex(ref.digest)  # InvalidArgument for anything but sha256
        failures: list[tuple[str, PodlingError]] = []
        for ep in self.endpoints(ref.domain):
            try:
                return await self._resolve_at(ep, ref, creds)
            except PodlingError as e:
                failures.append((ep.base, e))
        raise combined_error(str(ref), failures)

    async def check_manifest(self, ref: Reference, creds: Credentials | None = None) -> str:
        """Whether `ref`'s manifest exists, by HEAD requests alone (no manifest body, no blob).

        Endpoints are tried as for `resolve` (mirrors, then upstream); returns the base URL
        of the first that has it. Raises as `resolve` does, naming every endpoint tried.
        """
        target = ref.digest or ref.tag or "latest"
        failures: list[tuple[str, PodlingError]] = []
        for ep in self.endpoints(ref.domain):
            url = ep.url(ref.path, "manifests", target)
            try:
                with network_errors(f"manifest {target}"):
                    resp = await self._send(ep, ref.path, url, creds, {"Accept": ACCEPT}, "HEAD")
                    async with resp:
                        if resp.status != 200:
                            raise await status_error(resp, f"manifest {target}")
                return ep.base
            except PodlingError as e:
                failures.append((ep.base, e))
        raise combined_error(str(ref), failures)

    async def _resolve_at(
        self, ep: Endpoint, ref: Reference, creds: Credentials | None
    ) -> Resolved:
        target = ref.digest or ref.tag or "latest"
        data, media, digest = await self._manifest(ep, ref.path, target, ref.digest, creds)
        doc = parse(data, media)
        index_digest: str | None = None
        index_bytes: bytes | None = None
        if isinstance(doc, Index):
            chosen = select_platform(doc)
            index_digest, index_bytes = digest, data
            data, media, digest = await self._manifest(
                ep, ref.path, chosen.digest, chosen.digest, creds
            )
            doc = parse(data, media or chosen.media_type)
            if not isinstance(doc, Manifest):
                raise InvalidArgument(f"index entry {chosen.digest} is not an image manifest")
        return Resolved(
            endpoint=ep.base,
            repository=ref.path,
            manifest_digest=digest,
            manifest=doc,
            index_digest=index_digest,
            repo_digest_target=index_digest or digest,
            registry_host=ep.host,
            mirror=ep.mirror,
            manifest_bytes=data,
            index_bytes=index_bytes,
        )

    async def _manifest(
        self,
        ep: Endpoint,
        repo: str,
        target: str,
        expect: str | None,
        creds: Credentials | None,
    ) -> tuple[bytes, str, str]:
        """GET one manifest; returns (bytes, media type, sha256 digest), verified."""
        url = ep.url(repo, "manifests", target)
        with network_errors(f"manifest {target}"):
            resp = await self._send(ep, repo, url, creds, {"Accept": ACCEPT})
            async with resp:
                if resp.status != 200:
                    raise await status_error(resp, f"manifest {target}")
                data = await _read_capped(resp, MANIFEST_LIMIT, f"manifest {target}")
                header = resp.headers.get("Docker-Content-Digest", "")
                media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        actual = sha256_digest(data)
        if expect is not None and actual != expect:
            raise DataLoss(f"manifest {expect} does not match its digest (content is {actual})")
        if expect is None and header.startswith("sha256:") and header != actual:
            raise DataLoss(f"manifest {target}: registry says {header} but the content is {actual}")
        return data, media, actual

    # ---- blobs -------------------------------------------------------------------

    async def fetch_blob(
        self,
        resolved: Resolved,
        desc: Descriptor,
        store: ContentStore,
        creds: Credentials | None,
        progress: ProgressFn | None = None,
    ) -> Path:
        """Download `desc` into `store` (verified) and return its path.

        Returns at once if the store has it. DataLoss on digest/size mismatch (nothing is
        kept); DeadlineExceeded after `stall_timeout` seconds without data and
        Unavailable on a dropped connection (the partial download is kept and the next
        call resumes it with a Range request).
        """
        if store.has(desc.digest):
            return store.path(desc.digest)
        ep = Endpoint(resolved.endpoint, resolved.mirror, resolved.registry_host)
        async with self._blob_locks.hold(desc.digest):
            if store.has(desc.digest):
                return store.path(desc.digest)
            ing = await asyncio.to_thread(store.ingest, desc.digest, desc.size)
            job = _BlobJob(ep, resolved.repository, desc, ing, creds, progress)
            resumed = ing.offset > 0
            try:
                return await self._download(job)
            except DataLoss:
                if not resumed:
                    raise
            # The kept partial was bad (or the server ignored it badly): start over once.
            job.ing = await asyncio.to_thread(store.ingest, desc.digest, desc.size)
            job.ing.reset()
            return await self._download(job)

    async def _download(self, job: _BlobJob) -> Path:
        """Stream the rest of the blob into job.ing and commit it; see fetch_blob."""
        ing, size = job.ing, job.desc.size
        what = f"blob {job.desc.digest} from {job.ep.base}"
        kept = "bytes kept, a retry resumes from there"
        try:
            if ing.offset < size:
                await self._stream_blob(job)
        except TimeoutError as e:
            ing.close()
            raise DeadlineExceeded(
                f"{what}: no data for {self._stall:g}s; {ing.offset} of {size} {kept}"
            ) from e
        except HttpError as e:
            ing.close()
            raise Unavailable(
                f"{what}: transfer failed ({describe(e)}); {ing.offset} of {size} {kept}"
            ) from e
        except DataLoss:
            ing.abort()  # wrong content is never kept
            raise
        except BaseException:
            ing.close()  # keeps the partial file for a later resume
            raise
        if ing.offset < size:
            ing.close()
            raise Unavailable(f"{what}: connection ended early; {ing.offset} of {size} {kept}")
        job.report(force=True)
        return await asyncio.to_thread(ing.commit)

    async def _stream_blob(self, job: _BlobJob) -> None:
        async with await self._open_blob(job) as resp:
            job.report(force=True)
            async for chunk in resp.iter_chunked(_CHUNK):
                job.ing.write(chunk)
                job.report()

    async def _open_blob(self, job: _BlobJob) -> Response:
        """GET the blob, resuming at ing.offset when the server honours Range.

        On return the response body continues exactly at job.ing.offset.
        """
        ing, desc = job.ing, job.desc
        url = job.ep.url(job.repo, "blobs", desc.digest)
        for _ in range(2):
            headers = {"Range": f"bytes={ing.offset}-"} if ing.offset else {}
            resp = await self._send(job.ep, job.repo, url, job.creds, headers)
            if resp.status == 200:
                if resp.content_length not in (None, desc.size):
                    resp.release()
                    raise DataLoss(
                        f"blob {desc.digest}: server sends {resp.content_length} bytes, "
                        f"descriptor says {desc.size}"
                    )
                if ing.offset:
                    ing.reset()  # the server ignored Range and sends everything
                return resp
            if resp.status == 206 and _range_start(resp) == ing.offset:
                return resp
            if resp.status in (206, 416) and ing.offset:
                resp.release()  # unusable partial answer: start from zero
                ing.reset()
                continue
            async with resp:
                raise await status_error(resp, f"blob {desc.digest}")
        raise Unavailable(
            f"blob {desc.digest}: {job.ep.base} answers Range requests inconsistently"
        )

    async def _send(
        self,
        ep: Endpoint,
        repo: str,
        url: str,
        creds: Credentials | None,
        headers: Mapping[str, str],
        method: str = "GET",
    ) -> Response:
        # Pull credentials are for the upstream registry only; mirrors never see them.
        return await self._auth.get(
            self._http(), (ep.base, repo), url, None if ep.mirror else creds, headers, method
        )


@dataclass
class _BlobJob:
    """One blob download in progress."""

    ep: Endpoint
    repo: str
    desc: Descriptor
    ing: Ingest
    creds: Credentials | None
    progress: ProgressFn | None
    reported: int = -1

    def report(self, force: bool = False) -> None:
        """Call the progress callback, at most once per _PROGRESS_STEP bytes unless forced."""
        done = self.ing.offset
        if self.progress is not None and (force or done - self.reported >= _PROGRESS_STEP):
            self.reported = done
            self.progress(self.desc.digest, done, self.desc.size)


def _range_start(resp: Response) -> int | None:
    m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


async def _read_capped(resp: Response, limit: int, what: str) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise InvalidArgument(f"{what} is {resp.content_length} bytes; the limit is {limit}")
    buf = bytearray()
    async for chunk in resp.iter_chunked(_CHUNK):
        buf += chunk
        if len(buf) > limit:
            raise InvalidArgument(f"{what} is larger than the {limit} byte limit")
    return bytes(buf)

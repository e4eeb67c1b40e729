"""RegistryClient against a real docker-registry, a bearer-token front and fake servers.

All traffic stays on 127.0.0.1. The real registry covers the protocol paths; small
aiohttp fakes (in a thread) cover what a healthy registry never does: corrupt bytes,
dropped connections, stalls, redirects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from podling.errors import (
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from podling.image.auth import Authenticator, Credentials
from podling.image.content import ContentStore
from podling.image.manifest import OCI_MANIFEST, Descriptor, Manifest, host_platform
from podling.image.reference import parse_reference
from podling.image.registry import HostConfig, RegistryClient, Resolved
from tests.support.images import (
    BuiltImage,
    BuiltIndex,
    build_image,
    busybox_rootfs_layer,
    layer,
    push_image,
    push_index,
    sha256,
    two_platform_images,
)
from tests.support.registry import RegistryServer, closed_port_url, registry_fixture
from tests.support.tokenserver import ThreadedServer, TokenServer

pytestmark = pytest.mark.root  # starts real docker-registry processes

USERS = {"alice": "wonderland"}


class Pushed:
    """Images pushed to the shared anonymous registry, by repository name."""

    def __init__(self, reg: RegistryServer) -> None:
        base = busybox_rootfs_layer()
        extra = layer({"etc/motd": b"hello\n"})
        cfg = {"Cmd": ["sh"], "Env": ["PATH=/bin"]}
        self.images: dict[str, BuiltImage] = {
            "gzip": build_image([base, extra], "gzip", cfg),
            "zstd": build_image([base, extra], "zstd", cfg),
            "plain": build_image([base, extra], "none", cfg),
            "docker": build_image([base, extra], "gzip", cfg, media="docker"),
        }
        for repo, img in self.images.items():
            push_image(reg.url, f"test/{repo}", "v1", img)
        self.platforms = two_platform_images()
        self.index: BuiltIndex = push_index(reg.url, "test/multi", "v1", self.platforms)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from registry_fixture(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer) -> Pushed:
    return Pushed(registry)


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


@pytest.fixture
async def client(registry: RegistryServer) -> AsyncIterator[RegistryClient]:
    c = RegistryClient({registry.host: HostConfig(insecure=True)}, stall_timeout=5)
    yield c
    await c.close()


def ingest_files(store: ContentStore) -> list[Path]:
    return sorted((store.root / "ingest").iterdir())


async def pull_all(
    client: RegistryClient, resolved: Resolved, store: ContentStore, creds: Credentials | None
) -> list[Path]:
    man = resolved.manifest
    return [await client.fetch_blob(resolved, d, store, creds) for d in (man.config, *man.layers)]


def assert_pulled(resolved: Resolved, img: BuiltImage, store: ContentStore) -> None:
    assert resolved.manifest_digest == img.manifest_digest
    assert resolved.manifest_bytes == img.manifest
    assert [d.digest for d in resolved.manifest.layers] == [b.digest for b in img.layers]
    for digest, data in img.blobs.items():
        assert store.read_bytes(digest) == data
    assert ingest_files(store) == []


# ---- anonymous pulls -------------------------------------------------------------------


@pytest.mark.parametrize("repo", ["gzip", "zstd", "plain", "docker"])
async def test_anonymous_pull(
    repo: str,
    registry: RegistryServer,
    pushed: Pushed,
    client: RegistryClient,
    store: ContentStore,
) -> None:
    img = pushed.images[repo]
    resolved = await client.resolve(parse_reference(f"{registry.host}/test/{repo}:v1"), None)
    assert resolved.endpoint == registry.url
    assert resolved.repository == f"test/{repo}"
    assert resolved.index_digest is None and resolved.index_bytes is None
    assert resolved.repo_digest_target == img.manifest_digest
    assert resolved.manifest.media_type == img.manifest_media_type
    assert [d.media_type for d in resolved.manifest.layers] == [b.media_type for b in img.layers]
    paths = await pull_all(client, resolved, store, None)
    assert paths == [store.path(d) for d in img.blobs]
    assert_pulled(resolved, img, store)


async def test_index_picks_host_platform(
    registry: RegistryServer, pushed: Pushed, client: RegistryClient, store: ContentStore
) -> None:
    os_, arch, _ = host_platform()
    want = pushed.platforms[f"{os_}/{arch}"]
    other = next(img for key, img in pushed.platforms.items() if key != f"{os_}/{arch}")
    resolved = await client.resolve(parse_reference(f"{registry.host}/test/multi:v1"), None)
    assert resolved.index_digest == pushed.index.digest
    assert resolved.index_bytes == pushed.index.data
    assert resolved.repo_digest_target == pushed.index.digest
    assert resolved.manifest_digest == want.manifest_digest != other.manifest_digest
    await pull_all(client, resolved, store, None)
    assert_pulled(resolved, want, store)
    assert not store.has(other.layers[-1].digest)


async def test_resolve_by_digest(
    registry: RegistryServer, pushed: Pushed, client: RegistryClient
) -> None:
    img = pushed.images["gzip"]
    ref = parse_reference(f"{registry.host}/test/gzip@{img.manifest_digest}")
    resolved = await client.resolve(ref, None)
    assert resolved.manifest_digest == resolved.repo_digest_target == img.manifest_digest
    by_index = await client.resolve(
        parse_reference(f"{registry.host}/test/multi@{pushed.index.digest}"), None
    )
    assert by_index.repo_digest_target == pushed.index.digest


async def test_not_found(registry: RegistryServer, pushed: Pushed, client: RegistryClient) -> None:
    with pytest.raises(NotFound, match=r"image .*test/gzip:nope not found.*manifest"):
        await client.resolve(parse_reference(f"{registry.host}/test/gzip:nope"), None)
    with pytest.raises(NotFound, match="not found"):
        await client.resolve(parse_reference(f"{registry.host}/no/such:v1"), None)


async def test_blob_already_stored_needs_no_network(pushed: Pushed, store: ContentStore) -> None:
    img = pushed.images["gzip"]
    store.put_bytes(img.config.data)
    dead = RegistryClient({}, stall_timeout=1)
    resolved = fake_resolved(closed_port_url(), "x")
    desc = Descriptor(img.config.media_type, img.config.digest, img.config.size)
    try:
        assert await dead.fetch_blob(resolved, desc, store, None) == store.path(desc.digest)
    finally:
        await dead.close()


async def test_progress_reported(
    registry: RegistryServer, pushed: Pushed, client: RegistryClient, store: ContentStore
) -> None:
    resolved = await client.resolve(parse_reference(f"{registry.host}/test/plain:v1"), None)
    seen: list[tuple[str, int, int]] = []
    big = resolved.manifest.layers[0]
    await client.fetch_blob(resolved, big, store, None, lambda *a: seen.append(a))
    assert seen[-1] == (big.digest, big.size, big.size)
    assert len(seen) >= 3  # the busybox layer is ~2 MB: intermediate updates too
    dones = [done for _, done, _ in seen]
    assert dones == sorted(dones)


async def test_concurrent_fetches_of_one_blob(
    registry: RegistryServer, pushed: Pushed, client: RegistryClient, store: ContentStore
) -> None:
    """Two pulls sharing a layer must not write one ingest file at the same time."""
    resolved = await client.resolve(parse_reference(f"{registry.host}/test/plain:v1"), None)
    big = resolved.manifest.layers[0]
    paths = await asyncio.gather(*(client.fetch_blob(resolved, big, store, None) for _ in range(3)))
    assert set(paths) == {store.path(big.digest)}
    assert store.read_bytes(big.digest) == pushed.images["plain"].blobs[big.digest]
    assert ingest_files(store) == []
    assert len(client._blob_locks) == 0  # no per-digest lock outlives its downloads


# ---- basic auth ------------------------------------------------------------------------


def _small() -> BuiltImage:
    return build_image([layer({"hello.txt": b"hi\n"})], "gzip", {"Cmd": ["/hello"]})


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    reg = RegistryServer(tmp_path_factory.mktemp("authreg"), users=USERS).start()
    try:
        push_image(reg.url, "private/app", "v1", _small(), auth=("alice", "wonderland"))
        yield reg
    finally:
        reg.stop()


@pytest.mark.parametrize(
    ("creds", "error"),
    [
        (Credentials("alice", "wonderland"), None),
        (Credentials.from_auth_field("YWxpY2U6d29uZGVybGFuZA=="), None),  # alice:wonderland
        (Credentials("alice", "wrong"), "rejected the credentials"),
        (None, "none were given"),
        (Credentials(registry_token="tok"), "none were given|requires"),
    ],
)
async def test_basic_auth(
    auth_registry: RegistryServer,
    store: ContentStore,
    creds: Credentials | None,
    error: str | None,
) -> None:
    client = RegistryClient({auth_registry.host: HostConfig(insecure=True)}, stall_timeout=5)
    ref = parse_reference(f"{auth_registry.host}/private/app:v1")
    try:
        if error is not None:
            with pytest.raises(Unauthenticated, match=error):
                await client.resolve(ref, creds)
            return
        resolved = await client.resolve(ref, creds)
        await pull_all(client, resolved, store, creds)
        assert_pulled(resolved, _small(), store)
    finally:
        await client.close()


# ---- bearer tokens -----------------------------------------------------------------------


@pytest.fixture
def token_front(registry: RegistryServer, pushed: Pushed) -> Iterator[TokenServer]:
    with TokenServer(registry.url) as ts:
        yield ts


async def test_bearer_anonymous_token_cached(
    token_front: TokenServer, pushed: Pushed, store: ContentStore
) -> None:
    client = RegistryClient({token_front.host: HostConfig(insecure=True)}, stall_timeout=5)
    try:
        resolved = await client.resolve(parse_reference(f"{token_front.host}/test/gzip:v1"), None)
        await pull_all(client, resolved, store, None)  # config + 2 layers
    finally:
        await client.close()
    assert_pulled(resolved, pushed.images["gzip"], store)
    assert token_front.token_requests == 1
    assert token_front.token_query[0] == {
        "service": "test-registry",
        "scope": "repository:test/gzip:pull",
    }
    bearers = {a for a in token_front.seen_authorization if a}
    assert len(bearers) == 1  # one token reused for manifest and blobs
    # Only the very first request went out without a token; later ones sent it up front.
    assert token_front.seen_authorization.count("") == 1


async def test_bearer_token_renewed_after_expiry(
    token_front: TokenServer, pushed: Pushed, store: ContentStore
) -> None:
    now = [0.0]
    client = RegistryClient({token_front.host: HostConfig(insecure=True)}, stall_timeout=5)
    client._auth = Authenticator(lambda: now[0])  # test hook: control token lifetimes
    try:
        resolved = await client.resolve(parse_reference(f"{token_front.host}/test/zstd:v1"), None)
        await client.fetch_blob(resolved, resolved.manifest.config, store, None)
        assert token_front.token_requests == 1
        now[0] += 1000  # past expires_in=300
        await client.fetch_blob(resolved, resolved.manifest.layers[0], store, None)
        assert token_front.token_requests == 2
    finally:
        await client.close()


async def test_bearer_with_credentials(
    registry: RegistryServer, pushed: Pushed, store: ContentStore
) -> None:
    with TokenServer(registry.url, users=USERS) as ts:
        client = RegistryClient({ts.host: HostConfig(insecure=True)}, stall_timeout=5)
        ref = parse_reference(f"{ts.host}/test/gzip:v1")
        try:
            with pytest.raises(Unauthenticated, match="anonymous"):
                await client.resolve(ref, None)
            with pytest.raises(Unauthenticated, match="rejected the credentials"):
                await client.resolve(ref, Credentials("alice", "nope"))
            resolved = await client.resolve(ref, Credentials("alice", "wonderland"))
            assert resolved.manifest_digest == pushed.images["gzip"].manifest_digest
            # A registry token is sent as the bearer as-is: no token request.
            ts.tokens["pre-issued"] = "repository:test/zstd:pull"
            before = ts.token_requests
            zref = parse_reference(f"{ts.host}/test/zstd:v1")
            await client.resolve(zref, Credentials(registry_token="pre-issued"))
            assert ts.token_requests == before
        finally:
            await client.close()


# ---- mirrors -----------------------------------------------------------------------------


async def test_mirror_tried_first(tmp_path: Path, registry: RegistryServer, pushed: Pushed) -> None:
    """The mirror has a different image under the same name: its answer wins."""
    with RegistryServer(tmp_path / "mirror") as mirror:
        mirrored = _small()
        push_image(mirror.url, "test/gzip", "v1", mirrored)
        hosts = {registry.host: HostConfig(mirrors=(mirror.url,), insecure=True)}
        client = RegistryClient(hosts, stall_timeout=5)
        try:
            resolved = await client.resolve(parse_reference(f"{registry.host}/test/gzip:v1"), None)
            assert resolved.endpoint == mirror.url and resolved.mirror
            assert resolved.manifest_digest == mirrored.manifest_digest
            store = ContentStore(tmp_path / "content")
            await pull_all(client, resolved, store, None)
            assert_pulled(resolved, mirrored, store)
            # The mirror lacks test/zstd (404): the upstream serves it.
            zref = parse_reference(f"{registry.host}/test/zstd:v1")
            fallback = await client.resolve(zref, None)
            assert fallback.endpoint == registry.url and not fallback.mirror
        finally:
            await client.close()


async def test_dead_mirror_falls_back_to_upstream(
    registry: RegistryServer, pushed: Pushed, store: ContentStore
) -> None:
    dead = closed_port_url()
    hosts = {registry.host: HostConfig(mirrors=(dead,), insecure=True)}
    client = RegistryClient(hosts, stall_timeout=5)
    try:
        resolved = await client.resolve(parse_reference(f"{registry.host}/test/gzip:v1"), None)
        assert resolved.endpoint == registry.url
        await pull_all(client, resolved, store, None)
        assert_pulled(resolved, pushed.images["gzip"], store)
        with pytest.raises(NotFound) as exc:
            await client.resolve(parse_reference(f"{registry.host}/test/gzip:missing"), None)
        assert dead in exc.value.message and registry.url in exc.value.message
        assert "cannot connect" in exc.value.message
    finally:
        await client.close()


async def test_skip_upstream_dead_mirror(registry: RegistryServer, pushed: Pushed) -> None:
    dead = closed_port_url()
    hosts = {registry.host: HostConfig(mirrors=(dead,), insecure=True, skip_upstream=True)}
    client = RegistryClient(hosts, stall_timeout=5)
    try:
        with pytest.raises(Unavailable) as exc:
            await client.resolve(parse_reference(f"{registry.host}/test/gzip:v1"), None)
        assert dead in exc.value.message
        assert registry.url not in exc.value.message
    finally:
        await client.close()


async def test_upstream_is_https_unless_insecure(registry: RegistryServer, pushed: Pushed) -> None:
    """Without `insecure` the client speaks TLS to the plain-http registry and fails."""
    client = RegistryClient({}, stall_timeout=5)
    try:
        with pytest.raises(Unavailable) as exc:
            await client.resolve(parse_reference(f"{registry.host}/test/gzip:v1"), None)
        assert f"https://{registry.host}" in exc.value.message
    finally:
        await client.close()


# ---- integrity ------------------------------------------------------------------------------


async def test_corrupted_blob_is_data_loss(tmp_path: Path, store: ContentStore) -> None:
    img = build_image([layer({"data": b"A" * 5000})], "none", {})
    with RegistryServer(tmp_path / "reg") as reg:
        push_image(reg.url, "test/bad", "v1", img)
        blob = img.layers[0]
        path = reg.blob_data_path(blob.digest)
        path.write_bytes(blob.data.replace(b"A" * 5000, b"B" * 5000))  # same size
        client = RegistryClient({reg.host: HostConfig(insecure=True)}, stall_timeout=5)
        try:
            resolved = await client.resolve(parse_reference(f"{reg.host}/test/bad:v1"), None)
            with pytest.raises(DataLoss, match=blob.digest):
                await client.fetch_blob(resolved, resolved.manifest.layers[0], store, None)
        finally:
            await client.close()
    assert not store.has(blob.digest)
    assert ingest_files(store) == []


# ---- fake servers for failure modes -----------------------------------------------------------

BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = sha256(BLOB)
BLOB_DESC = Descriptor("application/vnd.oci.image.layer.v1.tar", BLOB_DIGEST, len(BLOB))


def fake_resolved(endpoint: str, repo: str = "fake/app") -> Resolved:
    man = Manifest(OCI_MANIFEST, BLOB_DESC, (BLOB_DESC,))
    return Resolved(endpoint, repo, "sha256:" + "0" * 64, man, None, "sha256:" + "0" * 64)


class BlobServer:
    """Serves BLOB at /v2/fake/app/blobs/<digest>; `mode` picks a misbehaviour per request."""

    def __init__(self, modes: list[str]) -> None:
        self.modes = modes
        self.requests: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get("/v2/fake/app/blobs/{digest}", self.blob)
        app.router.add_get("/v2/fake/app/manifests/{ref}", self.manifest)
        self.server = ThreadedServer(app)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        mode = self.modes.pop(0) if len(self.modes) > 1 else self.modes[0]
        start = 0
        rng = request.headers.get("Range", "")
        if rng and mode == "ranges":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(BLOB) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
        await resp.prepare(request)
        half = len(BLOB) // 2
        if mode == "drop":
            await resp.write(BLOB[:half])
            assert request.transport is not None
            request.transport.abort()  # vanish mid-body
            return resp
        if mode == "stall":
            await resp.write(BLOB[:half])
            await asyncio.sleep(30)  # cancelled by server shutdown
        await resp.write(BLOB[start:])
        await resp.write_eof()
        return resp

    async def manifest(self, request: web.Request) -> web.Response:
        body = b'{"schemaVersion":2}' + b" " * (5 << 20) if "huge" in request.path else b"{}"
        return web.Response(
            body=body,
            headers={"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "1" * 64},
        )


@pytest.fixture
def blob_server() -> Iterator[BlobServer]:
    srv = BlobServer(["ranges"])
    with srv.server:
        yield srv


async def test_resume_after_dropped_connection(
    blob_server: BlobServer, store: ContentStore
) -> None:
    blob_server.modes[:] = ["drop", "ranges"]
    client = RegistryClient({}, stall_timeout=5)
    resolved = fake_resolved(blob_server.server.url)
    try:
        with pytest.raises(Unavailable, match="retry resumes"):
            await client.fetch_blob(resolved, BLOB_DESC, store, None)
        [partial] = ingest_files(store)
        kept = partial.stat().st_size
        assert 0 < kept < len(BLOB)
        path = await client.fetch_blob(resolved, BLOB_DESC, store, None)
    finally:
        await client.close()
    assert path.read_bytes() == BLOB
    assert blob_server.requests[1]["Range"] == f"bytes={kept}-"
    assert "Range" not in blob_server.requests[0]
    assert ingest_files(store) == []


async def test_server_ignoring_range_restarts_from_zero(
    blob_server: BlobServer, store: ContentStore
) -> None:
    blob_server.modes[:] = ["drop", "full"]
    client = RegistryClient({}, stall_timeout=5)
    resolved = fake_resolved(blob_server.server.url)
    try:
        with pytest.raises(Unavailable):
            await client.fetch_blob(resolved, BLOB_DESC, store, None)
        path = await client.fetch_blob(resolved, BLOB_DESC, store, None)
    finally:
        await client.close()
    assert "Range" in blob_server.requests[1]  # asked to resume, got a 200 instead
    assert path.read_bytes() == BLOB


async def test_stall_times_out_and_keeps_partial(
    blob_server: BlobServer, store: ContentStore
) -> None:
    blob_server.modes[:] = ["stall", "ranges"]
    client = RegistryClient({}, stall_timeout=0.5)
    resolved = fake_resolved(blob_server.server.url)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=BLOB_DIGEST):
            await client.fetch_blob(resolved, BLOB_DESC, store, None)
        assert time.monotonic() - started < 3
        [partial] = ingest_files(store)
        assert 0 < partial.stat().st_size < len(BLOB)
        assert not store.has(BLOB_DIGEST)
        path = await client.fetch_blob(resolved, BLOB_DESC, store, None)  # resumes
        assert path.read_bytes() == BLOB
    finally:
        await client.close()


async def test_wrong_size_descriptor_is_data_loss(
    blob_server: BlobServer, store: ContentStore
) -> None:
    client = RegistryClient({}, stall_timeout=5)
    small = Descriptor(BLOB_DESC.media_type, BLOB_DIGEST, 1000)
    try:
        with pytest.raises(DataLoss, match="1000"):
            await client.fetch_blob(fake_resolved(blob_server.server.url), small, store, None)
    finally:
        await client.close()
    assert ingest_files(store) == [] and not store.has(BLOB_DIGEST)


async def test_manifest_digest_header_mismatch(blob_server: BlobServer) -> None:
    client = RegistryClient({blob_server.server.host: HostConfig(insecure=True)}, stall_timeout=5)
    try:
        with pytest.raises(DataLoss, match="registry says"):
            await client.resolve(parse_reference(f"{blob_server.server.host}/fake/app:v1"), None)
        with pytest.raises(DataLoss, match="does not match"):
            ref = parse_reference(f"{blob_server.server.host}/fake/app@sha256:{'2' * 64}")
            await client.resolve(ref, None)
        with pytest.raises(InvalidArgument, match="limit"):
            await client.resolve(parse_reference(f"{blob_server.server.host}/fake/app:huge"), None)
    finally:
        await client.close()


async def test_redirect_drops_authorization_off_origin(store: ContentStore) -> None:
    """Registry demands a bearer token and redirects the blob to another origin."""
    target_headers: list[dict[str, str]] = []
    registry_headers: list[dict[str, str]] = []

    async def storage(request: web.Request) -> web.Response:
        target_headers.append(dict(request.headers))
        return web.Response(body=BLOB)

    storage_app = web.Application()
    storage_app.router.add_get("/bucket/blob", storage)
    with ThreadedServer(storage_app) as store_srv:

        async def blob(request: web.Request) -> web.Response:
            registry_headers.append(dict(request.headers))
            if request.headers.get("Authorization") != "Bearer secret-token":
                challenge = 'Bearer realm="http://127.0.0.1:1/token",service="s"'
                return web.Response(status=401, headers={"WWW-Authenticate": challenge})
            raise web.HTTPTemporaryRedirect(f"{store_srv.url}/bucket/blob")

        reg_app = web.Application()
        reg_app.router.add_get("/v2/fake/app/blobs/{digest}", blob)
        with ThreadedServer(reg_app) as reg_srv:
            client = RegistryClient({}, stall_timeout=5)
            creds = Credentials(registry_token="secret-token")
            try:
                path = await client.fetch_blob(fake_resolved(reg_srv.url), BLOB_DESC, store, creds)
            finally:
                await client.close()
    assert path.read_bytes() == BLOB
    assert registry_headers[-1]["Authorization"] == "Bearer secret-token"
    assert "Authorization" not in target_headers[0]

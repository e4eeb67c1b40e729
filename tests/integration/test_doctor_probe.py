"""doctor's registry probe on 127.0.0.1 servers that record every request: HEAD requests
only (through a mirror, then an upstream that wants a Bearer token), never a body GET."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiohttp import web

from podling.config import Config, ImagesConfig, RegistryConfig
from podling.doctor.probe import registry_probe
from podling.errors import DeadlineExceeded, NotFound
from tests.support.tokenserver import ThreadedServer

TOKEN = "pd7-token"


class Recorder:
    """An aiohttp app that records (method, path, ns query) and answers like `mode`."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: list[tuple[str, str, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = ThreadedServer(self.app)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.query.get("ns", "")))
        if self.mode == "slow":
            await asyncio.sleep(30)
        if self.mode == "missing" or request.path.endswith("/missing"):
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        if request.path == "/token":
            return web.json_response({"token": TOKEN, "expires_in": 300})
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            realm = f'Bearer realm="{self.server.url}/token",service="pd7"'
            return web.Response(status=401, headers={"WWW-Authenticate": realm})
        return web.Response(status=200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    mirror, upstream = Recorder("missing"), Recorder("token")
    mirror.server.start()
    upstream.server.start()
    try:
        yield mirror, upstream
    finally:
        mirror.server.stop()
        upstream.server.stop()


def config(host: str, **registry: object) -> Config:
    reg = RegistryConfig(**registry)  # type: ignore[arg-type]
    return Config(images=ImagesConfig(registries={host: reg}))


def test_mirror_then_upstream_with_token_heads_only(servers: tuple[Recorder, Recorder]) -> None:
    mirror, upstream = servers
    host = upstream.server.host
    probe = registry_probe(config(host, mirrors=[mirror.server.url], insecure=True))
    assert probe(f"{host}/pd7-pause:3.9") is None
    manifest = "/v2/pd7-pause/manifests/3.9"
    assert mirror.seen == [("HEAD", manifest, host)]  # a mirror is told the registry
    # the only GET is the token's
    assert upstream.seen == [("HEAD", manifest, ""), ("GET", "/token", ""), ("HEAD", manifest, "")]


def test_missing_manifest_names_every_endpoint(servers: tuple[Recorder, Recorder]) -> None:
    mirror, upstream = servers
    host = upstream.server.host
    probe = registry_probe(config(host, mirrors=[mirror.server.url], insecure=True))
    error = probe(f"{host}/pd7-pause:missing")
    assert isinstance(error, NotFound)
    assert mirror.server.url in error.message and upstream.server.url in error.message
    assert [method for method, _, _ in mirror.seen] == ["HEAD"]


def test_a_registry_that_never_answers_times_out() -> None:
    slow = Recorder("slow")
    slow.server.start()
    try:
        probe = registry_probe(config(slow.server.host, insecure=True), timeout=1)
        error = probe(f"{slow.server.host}/pd7-pause:3.9")
    finally:
        slow.server.stop()
    assert isinstance(error, DeadlineExceeded)

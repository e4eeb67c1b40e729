"""Unit tests for registry auth: challenge parsing, credentials, token caching, endpoints.

No network: the token service is a fake session object.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from podling.errors import ConfigError, InvalidArgument, Unauthenticated, Unavailable
from podling.image.auth import (
    Authenticator,
    Challenge,
    Credentials,
    basic_header,
    parse_www_authenticate,
    pick_challenge,
)
from podling.image.registry import HostConfig, RegistryClient

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/busybox:pull"'
)


# ---- WWW-Authenticate ------------------------------------------------------------------


def test_parse_docker_hub_bearer() -> None:
    [c] = parse_www_authenticate(HUB)
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    }


def test_parse_quoted_commas_and_escapes() -> None:
    [c] = parse_www_authenticate(
        r'Bearer realm="https://a/t", scope="repository:x/y:pull,push", note="say \"hi\", ok"'
    )
    assert c.params["scope"] == "repository:x/y:pull,push"
    assert c.params["note"] == 'say "hi", ok'
    assert c.params["realm"] == "https://a/t"


def test_parse_multiple_challenges_case_insensitive() -> None:
    cs = parse_www_authenticate('Basic REALM="r1", Bearer Realm="https://t",Service=svc')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].params == {"realm": "r1"}
    assert cs[1].params == {"realm": "https://t", "service": "svc"}


def test_parse_token68_and_bare_scheme() -> None:
    cs = parse_www_authenticate("Negotiate abc+/def==, Basic, Bearer realm=https://t")
    assert [c.scheme for c in cs] == ["negotiate", "basic", "bearer"]
    assert cs[0].token68 == "abc+/def=="
    assert cs[1].params == {}
    assert cs[2].params == {"realm": "https://t"}


@pytest.mark.parametrize(
    "header", ["", "   ", ",,,", '"unterminated', 'Bearer realm="never closed', "=== ,=,", "@@"]
)
def test_parse_garbage_does_not_raise(header: str) -> None:
    result = parse_www_authenticate(header)
    assert isinstance(result, list)


def test_unterminated_quote_is_lenient() -> None:
    [c] = parse_www_authenticate('Bearer realm="https://t/token')
    assert c.params["realm"] == "https://t/token"


def test_pick_prefers_bearer() -> None:
    cs = parse_www_authenticate('Basic realm="x", Bearer realm="https://t"')
    picked = pick_challenge(cs)
    assert picked is not None and picked.scheme == "bearer"
    assert pick_challenge(parse_www_authenticate("Digest realm=x")) is None


# ---- credentials -----------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_field_decodes_user_and_password_with_colon() -> None:
    creds = Credentials.from_auth_field(b64("alice:pa:ss"))
    assert creds == Credentials(username="alice", password="pa:ss")


@pytest.mark.parametrize("bad", ["%%%notbase64", b64("no-colon"), b64(":nouser"), "YQ"])
def test_auth_field_malformed(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        Credentials.from_auth_field(bad)


def test_auth_field_not_utf8() -> None:
    with pytest.raises(InvalidArgument):
        Credentials.from_auth_field(base64.b64encode(b"\xff\xfe:x").decode())


def test_basic_header() -> None:
    assert basic_header(Credentials("u", "p")) == "Basic " + b64("u:p")


# ---- Authenticator with a fake token service -------------------------------------------


class FakeResp:
    def __init__(self, status: int, doc: Any) -> None:
        self.status = status
        self._doc = doc

    async def json(self) -> Any:
        return self._doc

    async def __aenter__(self) -> FakeResp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


class FakeSession:
    """Records token requests; answers with `answers` in turn (last one repeats)."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def _next(self) -> FakeResp:
        status, doc = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        return FakeResp(status, doc)

    async def request(self, method: str, url: str, **kw: Any) -> FakeResp:
        self.calls.append({"method": method, "url": url, **kw})
        return self._next()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


WHERE = ("https://reg.example", "team/app")
CHALLENGE = (
    'Bearer realm="https://auth.example/token",service="svc",scope="repository:team/app:pull"'
)


async def test_bearer_token_cached_until_expiry() -> None:
    clock = Clock()
    auth = Authenticator(clock)
    session = FakeSession((200, {"token": "t1", "expires_in": 120}))
    assert auth.cached_header(WHERE, None) is None
    assert await auth.authorize(session, WHERE, CHALLENGE, None) == "Bearer t1"  # type: ignore[arg-type]
    assert auth.cached_header(WHERE, None) == "Bearer t1"
    assert await auth.authorize(session, WHERE, CHALLENGE, None) == "Bearer t1"  # type: ignore[arg-type]
    assert len(session.calls) == 1
    call = session.calls[0]
    assert call["method"] == "GET" and call["url"] == "https://auth.example/token"
    assert ("scope", "repository:team/app:pull") in call["params"]
    assert ("service", "svc") in call["params"]
    assert "Authorization" not in call["headers"]  # anonymous
    clock.now += 120
    assert auth.cached_header(WHERE, None) is None  # expired (renewed before the deadline)
    await auth.authorize(session, WHERE, CHALLENGE, None)  # type: ignore[arg-type]
    assert len(session.calls) == 2


async def test_default_expiry_is_60s_and_access_token_accepted() -> None:
    clock = Clock()
    auth = Authenticator(clock)
    session = FakeSession((200, {"access_token": "a1", "expires_in": 3}))
    assert await auth.authorize(session, WHERE, CHALLENGE, None) == "Bearer a1"  # type: ignore[arg-type]
    clock.now += 30
    assert auth.cached_header(WHERE, None) == "Bearer a1"  # short expires_in raised to 60 s
    clock.now += 40
    assert auth.cached_header(WHERE, None) is None


async def test_tokens_are_per_scope_and_per_user() -> None:
    auth = Authenticator(Clock())
    session = FakeSession((200, {"token": "x"}))
    other = ("https://reg.example", "team/other")
    other_challenge = CHALLENGE.replace("team/app", "team/other")
    await auth.authorize(session, WHERE, CHALLENGE, None)  # type: ignore[arg-type]
    await auth.authorize(session, other, other_challenge, None)  # type: ignore[arg-type]
    await auth.authorize(session, WHERE, CHALLENGE, Credentials("bob", "pw"))  # type: ignore[arg-type]
    assert len(session.calls) == 3
    assert session.calls[2]["headers"]["Authorization"] == "Basic " + b64("bob:pw")


async def test_scope_defaults_to_repository_pull() -> None:
    auth = Authenticator(Clock())
    session = FakeSession((200, {"token": "x"}))
    await auth.authorize(session, WHERE, 'Bearer realm="https://a/t",service="s"', None)  # type: ignore[arg-type]
    assert ("scope", "repository:team/app:pull") in session.calls[0]["params"]


async def test_identity_token_uses_oauth2_refresh_grant() -> None:
    auth = Authenticator(Clock())
    session = FakeSession((200, {"access_token": "a"}))
    creds = Credentials(identity_token="refresh-me")
    assert await auth.authorize(session, WHERE, CHALLENGE, creds) == "Bearer a"  # type: ignore[arg-type]
    call = session.calls[0]
    assert call["method"] == "POST"
    form = dict(call["form"])
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == "refresh-me"
    assert form["scope"] == "repository:team/app:pull"


async def test_registry_token_used_directly() -> None:
    auth = Authenticator(Clock())
    session = FakeSession((500, None))
    creds = Credentials(registry_token="ready")
    assert await auth.authorize(session, WHERE, CHALLENGE, creds) == "Bearer ready"  # type: ignore[arg-type]
    assert auth.cached_header(WHERE, creds) == "Bearer ready"
    assert session.calls == []


async def test_token_service_refusals() -> None:
    auth = Authenticator(Clock())
    with pytest.raises(Unauthenticated, match="anonymous"):
        await auth.authorize(FakeSession((401, {})), WHERE, CHALLENGE, None)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="rejected the credentials"):
        await auth.authorize(  # type: ignore[arg-type]
            FakeSession((401, {})), WHERE, CHALLENGE, Credentials("u", "wrong")
        )
    with pytest.raises(Unavailable, match="HTTP 503"):
        await auth.authorize(FakeSession((503, {})), WHERE, CHALLENGE, None)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="without a token"):
        await auth.authorize(FakeSession((200, {"nope": 1})), WHERE, CHALLENGE, None)  # type: ignore[arg-type]


async def test_bearer_without_realm_url_is_refused() -> None:
    auth = Authenticator(Clock())
    with pytest.raises(Unauthenticated, match="realm"):
        await auth.authorize(FakeSession((200, {})), WHERE, 'Bearer service="s"', None)  # type: ignore[arg-type]


async def test_basic_challenge() -> None:
    auth = Authenticator(Clock())
    session = FakeSession((500, None))
    with pytest.raises(Unauthenticated, match="none were given"):
        await auth.authorize(session, WHERE, 'Basic realm="r"', None)  # type: ignore[arg-type]
    creds = Credentials("u", "p")
    assert await auth.authorize(session, WHERE, 'Basic realm="r"', creds) == basic_header(creds)  # type: ignore[arg-type]
    assert auth.cached_header(WHERE, creds) == basic_header(creds)
    auth.forget(WHERE, creds)
    assert auth.cached_header(WHERE, creds) is None
    assert session.calls == []


async def test_unsupported_scheme() -> None:
    auth = Authenticator(Clock())
    with pytest.raises(Unauthenticated, match="does not support"):
        await auth.authorize(FakeSession((200, {})), WHERE, "Digest realm=x", None)  # type: ignore[arg-type]


def test_challenge_dataclass_defaults() -> None:
    assert Challenge("basic").params == {}


# ---- endpoints ---------------------------------------------------------------------------


def urls(client: RegistryClient, host: str) -> Iterator[str]:
    for ep in client.endpoints(host):
        yield ep.url("a/b", "manifests", "v1")


def test_endpoint_order_and_urls() -> None:
    client = RegistryClient(
        {
            "docker.io": HostConfig(mirrors=("http://127.0.0.1:5000/", "https://m.example/v2")),
            "reg.local:5000": HostConfig(insecure=True),
            "only.mirror": HostConfig(mirrors=("https://m.example",), skip_upstream=True),
        },
        stall_timeout=5,
    )
    assert list(urls(client, "docker.io")) == [
        "http://127.0.0.1:5000/v2/a/b/manifests/v1?ns=docker.io",
        "https://m.example/v2/a/b/manifests/v1?ns=docker.io",
        "https://registry-1.docker.io/v2/a/b/manifests/v1",
    ]
    assert list(urls(client, "reg.local:5000")) == ["http://reg.local:5000/v2/a/b/manifests/v1"]
    assert list(urls(client, "quay.io")) == ["https://quay.io/v2/a/b/manifests/v1"]
    assert list(urls(client, "only.mirror")) == [
        "https://m.example/v2/a/b/manifests/v1?ns=only.mirror"
    ]


def test_skip_upstream_without_mirrors_is_invalid() -> None:
    client = RegistryClient({"x.io": HostConfig(skip_upstream=True)}, stall_timeout=5)
    with pytest.raises(InvalidArgument, match="skip_upstream"):
        client.endpoints("x.io")


@pytest.mark.parametrize("bad", ["ftp://m", "127.0.0.1:5000", "http://"])
def test_bad_mirror_url(bad: str) -> None:
    with pytest.raises(ConfigError):
        RegistryClient({"x.io": HostConfig(mirrors=(bad,))}, stall_timeout=5)

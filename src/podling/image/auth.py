"""Registry authentication: credentials, WWW-Authenticate parsing, Docker token auth.

Protocol facts (RFC 7235 challenges, Docker registry token auth):
- A registry answers 401 with `WWW-Authenticate: Basic realm=...` or
  `Bearer realm="<token url>",service="<name>",scope="repository:<repo>:pull"`.
- For Bearer, the client GETs `<realm>?service=..&scope=..` (with HTTP basic auth when it
  has a username/password, anonymously otherwise) and receives JSON with `token` or
  `access_token` and an optional `expires_in` (seconds, default 60).
- An identity token (refresh token) is exchanged with an OAuth2 POST
  `grant_type=refresh_token` to the same realm.
- A registry token is already a bearer token and is sent as-is.

Tokens are cached per (realm, service, scope) until they expire; challenges are
remembered per (endpoint, repository) so later requests send a cached token up front
instead of collecting a 401 first.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from podling.errors import InvalidArgument, Unauthenticated, Unavailable
from podling.image.http import HttpClient, HttpError, Response, origin_of
from podling.image.registry_errors import describe
from podling.keyedlock import KeyedLocks

_DEFAULT_EXPIRY = 60.0
# Renew a little before the server's deadline so a token does not expire in flight.
_EXPIRY_MARGIN = 5.0
_CLIENT_ID = "podling"
_MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)

# A cached token's key: (realm, service, scopes, credential identity).
_TokenKey = tuple[str, str, tuple[str, ...], str]


@dataclass(frozen=True)
class Credentials:
    """What a caller may present to a registry. Empty fields mean "not given"."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @staticmethod
    def from_auth_field(auth: str) -> Credentials:
        """Decode a CRI/Docker `auth` field (base64 of "user:password").

        InvalidArgument if it is not base64, not UTF-8 or has no ':' separator. The
        password may itself contain ':' (only the first one separates).
        """
        try:
            text = base64.b64decode(auth.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as e:
            raise InvalidArgument(
                "registry auth field is not valid base64 of 'user:password'"
            ) from e
        user, sep, password = text.partition(":")
        if not sep or not user:
            raise InvalidArgument("registry auth field must encode 'user:password'")
        return Credentials(username=user, password=password)

    @property
    def has_basic(self) -> bool:
        return bool(self.username)

    @property
    def empty(self) -> bool:
        return not (self.username or self.identity_token or self.registry_token)


@dataclass(frozen=True)
class Challenge:
    """One parsed WWW-Authenticate challenge; scheme and parameter names are lower case."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    token68: str = ""


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN_RE = re.compile(_TOKEN)
_PARAM_RE = re.compile(r"(" + _TOKEN + r")[ \t]*=[ \t]*")
_TOKEN68_RE = re.compile(r"([A-Za-z0-9._~+/-]+=*)[ \t]*(?=,|$)")
_SEPARATORS = " \t,"


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at text[pos] == '"'; returns (value, next position)."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    return "".join(out), i  # unterminated: take the rest, leniently


def _param_value(text: str, pos: int) -> tuple[str, int]:
    if pos < len(text) and text[pos] == '"':
        return _quoted(text, pos)
    end = pos
    while end < len(text) and text[end] not in _SEPARATORS:
        end += 1
    return text[pos:end], end


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value into its challenges, leniently.

    Handles several challenges in one header, quoted strings containing commas and
    backslash escapes, and token68 credentials. Garbage is skipped, never raised on.
    """
    challenges: list[Challenge] = []
    pos, fresh = 0, False
    while pos < len(header):
        while pos < len(header) and header[pos] in _SEPARATORS:
            pos += 1
        if pos >= len(header):
            break
        m68 = _TOKEN68_RE.match(header, pos) if challenges and fresh else None
        if m68 is not None and not _PARAM_RE.match(header, pos):
            challenges[-1] = Challenge(challenges[-1].scheme, {}, m68.group(1))
            pos, fresh = m68.end(), False
            continue
        fresh = False
        if challenges and (mp := _PARAM_RE.match(header, pos)):
            value, pos = _param_value(header, mp.end())
            challenges[-1].params[mp.group(1).lower()] = value
            continue
        mt = _TOKEN_RE.match(header, pos)
        if mt is None:
            pos += 1  # a stray character: skip it rather than fail the whole header
            continue
        challenges.append(Challenge(mt.group(0).lower()))
        pos, fresh = mt.end(), True
    return challenges


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Prefer Bearer over Basic; None if neither is offered."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _scopes(challenge: Challenge, default_scope: str) -> tuple[str, ...]:
    """Scopes to ask for: the challenge's (space separated) or the repository pull scope."""
    scope = challenge.params.get("scope", "")
    return tuple(scope.split()) if scope else (default_scope,)


class Authenticator:
    """Turns challenges into Authorization headers; caches tokens and challenges.

    One per RegistryClient; `clock` is injectable so tests can expire tokens.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[_TokenKey, tuple[str, float]] = {}
        self._challenges: dict[tuple[str, str], Challenge] = {}
        # One token request per key at a time: parallel layer pulls share the answer.
        self._token_locks: KeyedLocks[_TokenKey] = KeyedLocks()

    def cached_header(self, where: tuple[str, str], creds: Credentials | None) -> str | None:
        """An Authorization header for (endpoint, repository) without any network, if known."""
        challenge = self._challenges.get(where)
        if challenge is None:
            return None
        creds = creds or Credentials()
        if challenge.scheme == "basic":
            return basic_header(creds) if creds.has_basic else None
        if creds.registry_token:
            return "Bearer " + creds.registry_token
        token = self._cached_token(self._key(challenge, where[1], creds))
        return None if token is None else "Bearer " + token

    def _cached_token(self, key: _TokenKey) -> str | None:
        """The cached token for `key` if it has not expired; an expired one is dropped."""
        hit = self._tokens.get(key)
        if hit is None or hit[1] <= self._clock():
            self._tokens.pop(key, None)
            return None
        return hit[0]

    def forget(self, where: tuple[str, str], creds: Credentials | None) -> None:
        """Drop the cached token for (endpoint, repository): the registry refused it."""
        challenge = self._challenges.pop(where, None)
        if challenge is not None and challenge.scheme == "bearer":
            self._tokens.pop(self._key(challenge, where[1], creds or Credentials()), None)

    async def get(
        self,
        session: HttpClient,
        where: tuple[str, str],
        url: str,
        creds: Credentials | None,
        headers: Mapping[str, str],
        method: str = "GET",
    ) -> Response:
        """GET (or `method`) `url` on endpoint `where` = (base URL, repository), answering
        one 401.

        Sends a cached Authorization up front when it has one. Follows redirects, but
        Authorization goes only to the original origin (blob storage elsewhere must not
        see registry credentials). Unauthenticated if the registry still refuses after
        authenticating. The caller must release the returned response.
        """
        auth = self.cached_header(where, creds)
        resp = await _follow(session, url, headers, auth, method)
        if resp.status != 401 or origin_of(resp.url) != origin_of(url):
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        resp.release()
        if auth is not None:
            self.forget(where, creds)  # the cached token went stale
        auth = await self.authorize(session, where, challenge, creds)
        resp = await _follow(session, url, headers, auth, method)
        if resp.status != 401:
            return resp
        resp.release()
        self.forget(where, creds)
        if creds is None or creds.empty:
            raise Unauthenticated(
                f"{where[0]} requires credentials for {where[1]} and none were given: "
                "supply pull credentials (an image pull secret)"
            )
        raise Unauthenticated(f"{where[0]} rejected the credentials given for {where[1]}")

    async def authorize(
        self,
        session: HttpClient,
        where: tuple[str, str],
        header: str,
        creds: Credentials | None,
    ) -> str:
        """Answer a 401's WWW-Authenticate `header` with an Authorization header value.

        Unauthenticated when the challenge needs credentials we lack or the token
        service refuses ours; Unavailable when the token service cannot be reached.
        """
        challenge = pick_challenge(parse_www_authenticate(header))
        if challenge is None:
            raise Unauthenticated(
                f"registry {where[0]} demands an authentication scheme podling does not "
                f"support ({header!r}); only Basic and Bearer are supported"
            )
        creds = creds or Credentials()
        self._challenges[where] = challenge
        if challenge.scheme == "basic":
            if not creds.has_basic:
                raise Unauthenticated(
                    f"registry {where[0]} requires a username and password for {where[1]}, "
                    "and none were given: supply pull credentials (an image pull secret)"
                )
            return basic_header(creds)
        if creds.registry_token:
            return "Bearer " + creds.registry_token
        return "Bearer " + await self._fetch_token(session, challenge, where, creds)

    def _key(self, challenge: Challenge, repo: str, creds: Credentials) -> _TokenKey:
        # The credential identity is part of the key: a token minted for one user must
        # not be handed to a request made with another user's credentials.
        who = creds.username or ("idtoken:" + creds.identity_token[:16])
        return (
            challenge.params.get("realm", ""),
            challenge.params.get("service", ""),
            _scopes(challenge, f"repository:{repo}:pull"),
            who,
        )

    async def _fetch_token(
        self,
        session: HttpClient,
        challenge: Challenge,
        where: tuple[str, str],
        creds: Credentials,
    ) -> str:
        key = self._key(challenge, where[1], creds)
        async with self._token_locks.hold(
            key
        ):  # tokens are never empty (_new_token refuses one), so `or` is safe
            return self._cached_token(key) or await self._new_token(
                session, challenge, where, creds, key
            )

    async def _new_token(
        self,
        session: HttpClient,
        challenge: Challenge,
        where: tuple[str, str],
        creds: Credentials,
        key: _TokenKey,
    ) -> str:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise Unauthenticated(
                f"registry {where[0]} sent a Bearer challenge without a usable realm URL "
                f"({realm!r})"
            )
        doc = await self._token_request(session, realm, challenge, key[2], creds)
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise Unauthenticated(f"token service {realm} answered without a token")
        expires = doc.get("expires_in")
        lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 0.0
        lifetime = max(lifetime or _DEFAULT_EXPIRY, _DEFAULT_EXPIRY) - _EXPIRY_MARGIN
        self._tokens[key] = (token, self._clock() + lifetime)
        return token

    async def _token_request(
        self,
        session: HttpClient,
        realm: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        creds: Credentials,
    ) -> dict[str, Any]:
        service = challenge.params.get("service", "")
        try:
            if creds.identity_token:
                form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", creds.identity_token),
                    ("service", service),
                    ("client_id", _CLIENT_ID),
                    ("scope", " ".join(scopes)),
                ]
                resp = await session.request("POST", realm, form=form)
            else:
                query = [("service", service), *(("scope", s) for s in scopes)]
                headers = {"Authorization": basic_header(creds)} if creds.has_basic else {}
                resp = await session.request("GET", realm, params=query, headers=headers)
            async with resp:
                return await _token_answer(resp, realm, creds)
        except (HttpError, TimeoutError) as e:
            raise Unavailable(f"token service {realm} unreachable: {describe(e)}") from e


async def _token_answer(resp: Response, realm: str, creds: Credentials) -> dict[str, Any]:
    if resp.status in (401, 403):
        if creds.empty:
            raise Unauthenticated(
                f"token service {realm} refused anonymous access (HTTP {resp.status}): "
                "the image needs pull credentials"
            )
        raise Unauthenticated(
            f"token service {realm} rejected the credentials (HTTP {resp.status}): "
            "check the username/password or token"
        )
    if resp.status != 200:
        raise Unavailable(f"token service {realm} answered HTTP {resp.status}")
    try:
        doc = await resp.json()
    except ValueError as e:
        raise Unavailable(f"token service {realm} answered with invalid JSON") from e
    if not isinstance(doc, dict):
        raise Unavailable(f"token service {realm} answered with a non-object JSON body")
    return doc


async def _follow(
    session: HttpClient,
    url: str,
    headers: Mapping[str, str],
    auth: str | None,
    method: str = "GET",
) -> Response:
    """`method` (GET, HEAD) following redirects; Authorization goes only to `url`'s origin."""
    origin = origin_of(url)
    for _ in range(_MAX_REDIRECTS + 1):
        sent = dict(headers)
        if auth is not None and origin_of(url) == origin:
            sent["Authorization"] = auth
        resp = await session.request(method, url, headers=sent)
        location = resp.headers.get("Location")
        if resp.status not in _REDIRECTS or not location:
            return resp
        resp.release()
        url = urljoin(url, location)
    raise Unavailable(f"more than {_MAX_REDIRECTS} redirects fetching {url}")

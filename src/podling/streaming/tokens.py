"""One-time tokens that name a pending exec / attach / port-forward request.

The CRI call stores its request under a fresh token and hands the client a URL that
carries it; the first HTTP request with that token takes the request out again. The
token is the only thing that protects the stream URL, so it is random (>= 128 bits),
short-lived (TTL, 60 s by default) and single use: `consume` removes the entry even when
it expired or names another endpoint. At most `max_tokens` may be outstanding: beyond
that `issue` raises ResourceExhausted (the kubelet maps that to HTTP 429).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from podling.errors import ResourceExhausted
from podling.streaming.backend import Kind, Params

# 18 bytes = 144 bits of randomness, 24 URL-safe characters without padding.
_TOKEN_BYTES = 18


@dataclass(frozen=True)
class _Entry:
    kind: Kind
    params: Params
    expires: float


class TokenCache:
    """Token → pending request. Not thread-safe: use it from the event loop only."""

    def __init__(
        self,
        *,
        ttl: float = 60.0,
        max_tokens: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_tokens
        self._clock = clock
        # insertion order == expiry order (constant TTL), so purging scans from the front
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, kind: Kind, params: Params) -> str:
        """Store `params` for one `kind` request and return its new token."""
        self._purge()
        if len(self._entries) >= self._max:
            raise ResourceExhausted(
                f"maximum number of in-flight streaming requests exceeded ({self._max}); "
                "retry in a minute, once unused stream URLs have expired"
            )
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        self._entries[token] = _Entry(kind, params, self._clock() + self._ttl)
        return token

    def consume(self, kind: Kind, token: str) -> Params | None:
        """The request stored under `token` for `kind`, or None when the token is unknown,
        expired, or was issued for another kind. The token is gone afterwards either way."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.kind != kind or entry.expires <= self._clock():
            return None
        return entry.params

    def _purge(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[token]

"""One-time streaming tokens: random, single use, TTL, bounded."""

from __future__ import annotations

import re

import pytest

from podling.errors import ResourceExhausted
from podling.streaming.backend import ExecParams, PortForwardParams
from podling.streaming.tokens import TokenCache

EXEC = ExecParams("c1", ("ls",), False, False, True, True)
PF = PortForwardParams("p1", ())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_is_url_safe_and_long() -> None:
    cache = TokenCache()
    tokens = {cache.issue("exec", EXEC) for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", token)  # >= 128 bits in base64


def test_consume_returns_params_once() -> None:
    cache = TokenCache()
    token = cache.issue("exec", EXEC)
    assert cache.consume("exec", token) == EXEC
    assert cache.consume("exec", token) is None
    assert len(cache) == 0


def test_wrong_kind_fails_and_burns_the_token() -> None:
    cache = TokenCache()
    token = cache.issue("portforward", PF)
    assert cache.consume("exec", token) is None
    assert cache.consume("portforward", token) is None


def test_expired_token_is_refused() -> None:
    clock = Clock()
    cache = TokenCache(ttl=60, clock=clock)
    token = cache.issue("exec", EXEC)
    clock.now += 59.9
    fresh = cache.issue("exec", EXEC)
    assert cache.consume("exec", fresh) == EXEC
    clock.now += 0.2
    assert cache.consume("exec", token) is None


def test_limit_raises_resource_exhausted_and_expiry_frees_room() -> None:
    clock = Clock()
    cache = TokenCache(ttl=60, max_tokens=3, clock=clock)
    for _ in range(3):
        cache.issue("exec", EXEC)
    with pytest.raises(ResourceExhausted, match="in-flight"):
        cache.issue("exec", EXEC)
    clock.now += 61
    cache.issue("exec", EXEC)  # the expired ones were purged
    assert len(cache) == 1


def test_consuming_frees_room() -> None:
    cache = TokenCache(max_tokens=1)
    token = cache.issue("attach", EXEC)
    cache.consume("attach", token)
    cache.issue("attach", EXEC)

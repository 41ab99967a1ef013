"""Per-contract token buckets (3.3 check 8), with injected times so arithmetic is exact."""

from __future__ import annotations

import pytest

from gateway.ratelimit import RateLimiter, TokenBucket

T0 = 1_795_694_400.0


class TestTokenBucket:
    """One bucket: capacity ``requests``, refilled at ``requests``/``per_seconds``."""

    def test_starts_full(self) -> None:
        """A new bucket grants ``capacity`` requests at once, then refuses."""
        bucket = TokenBucket.full(4, 8, T0)
        assert [bucket.take(T0) for _ in range(4)] == [0, 0, 0, 0]
        assert bucket.take(T0) > 0

    def test_refill_exact(self) -> None:
        """4 per 8 s is one token per 2 s: exact, with binary-exact rates."""
        bucket = TokenBucket.full(4, 8, T0)
        for _ in range(4):
            bucket.take(T0)
        assert bucket.tokens == 0
        assert bucket.take(T0 + 1) == 1  # 0.5 token: 1 s to go
        assert bucket.tokens == 0.5
        assert bucket.take(T0 + 2) == 0  # exactly 1 token
        assert bucket.tokens == 0
        assert bucket.take(T0 + 2) == 2  # empty again: a whole token needs 2 s

    def test_refill_capped_at_capacity(self) -> None:
        """A long idle time refills at most to capacity."""
        bucket = TokenBucket.full(4, 8, T0)
        bucket.take(T0)
        bucket.take(T0 + 10_000)
        assert bucket.tokens == 3

    @pytest.mark.parametrize(
        ("requests", "per_seconds", "expected"),
        [(1, 60, 60), (600, 60, 1), (2, 5, 3), (3, 10, 4), (1, 1, 1), (1000, 1, 1)],
    )
    def test_retry_after_whole_seconds(
        self, requests: int, per_seconds: int, expected: int
    ) -> None:
        """Retry-After is the whole seconds until one token, rounded up, at least 1."""
        bucket = TokenBucket.full(requests, per_seconds, T0)
        for _ in range(requests):
            assert bucket.take(T0) == 0
        wait = bucket.take(T0)
        assert isinstance(wait, int)
        assert wait == expected

    def test_retry_after_is_honest(self) -> None:
        """Waiting the announced seconds is enough to be served."""
        bucket = TokenBucket.full(3, 10, T0)
        for _ in range(3):
            bucket.take(T0)
        wait = bucket.take(T0 + 0.7)
        assert wait == 3  # 0.21 token at 0.7 s; (1 - 0.21) / 0.3 = 2.63 -> 3
        assert bucket.take(T0 + 0.7 + wait) == 0

    def test_clock_going_back(self) -> None:
        """A reading earlier than the last one neither refills nor rewinds."""
        bucket = TokenBucket.full(2, 2, T0)
        bucket.take(T0 + 5)
        bucket.take(T0 + 5)
        assert bucket.take(T0) >= 1
        assert bucket.updated == T0 + 5


class TestRateLimiter:
    """Buckets per contract id."""

    def test_per_contract(self) -> None:
        """Contracts have separate buckets."""
        limiter = RateLimiter()
        assert limiter.take("a", 1, 60, T0) == 0
        assert limiter.take("a", 1, 60, T0) == 60
        assert limiter.take("b", 1, 60, T0) == 0

    def test_limit_change_resets(self) -> None:
        """A contract whose rate limit changed starts a fresh, full bucket."""
        limiter = RateLimiter()
        limiter.take("a", 1, 60, T0)
        assert limiter.take("a", 1, 60, T0) > 0
        assert limiter.take("a", 2, 60, T0) == 0
        assert limiter.take("a", 2, 60, T0) == 0
        assert limiter.take("a", 2, 60, T0) == 30
        assert limiter.take("a", 2, 30, T0) == 0  # per_seconds changed too

    def test_same_limit_keeps_state(self) -> None:
        """An unchanged limit keeps the bucket (no reset by asking again)."""
        limiter = RateLimiter()
        limiter.take("a", 2, 60, T0)
        limiter.take("a", 2, 60, T0)
        assert limiter.take("a", 2, 60, T0 + 1) == 29

    def test_retain_drops_buckets(self) -> None:
        """retain forgets contracts no longer loaded; a returning one starts full."""
        limiter = RateLimiter()
        limiter.take("a", 1, 60, T0)
        limiter.take("b", 1, 60, T0)
        limiter.retain({"b"})
        assert limiter.take("a", 1, 60, T0) == 0
        assert limiter.take("b", 1, 60, T0) == 60
        limiter.retain(set())
        assert limiter.take("b", 1, 60, T0) == 0

"""Per-contract token buckets (protocol 3.3, check 8).

A bucket holds up to ``requests`` tokens and refills at ``requests`` per
``per_seconds``. Time is passed in, so the arithmetic is tested exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class RateLimits(Protocol):
    """Where the buckets live; a store shared by several processes (``gateway.state``) too."""

    async def acquire(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """Take a token from ``contract``'s bucket; 0 or the ``Retry-After`` seconds."""

    def retain(self, contracts: set[str]) -> None:
        """Forget buckets of contracts no longer loaded (a missing bucket is a full one)."""


@dataclass
class TokenBucket:
    """One contract's bucket; starts full."""

    capacity: int
    per_seconds: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, capacity: int, per_seconds: int, now: float) -> TokenBucket:
        """A bucket holding ``capacity`` tokens at ``now``."""
        return cls(capacity=capacity, per_seconds=per_seconds, tokens=capacity, updated=now)

    def take(self, now: float) -> int:
        """Take one token: 0 when granted, else whole seconds until one is available."""
        rate = self.capacity / self.per_seconds
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / rate))


class RateLimiter:
    """Buckets by contract id; a changed limit starts a fresh bucket."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """Take a token from ``contract``'s bucket; 0 or the ``Retry-After`` seconds."""
        bucket = self._buckets.get(contract)
        if bucket is None or (bucket.capacity, bucket.per_seconds) != (requests, per_seconds):
            bucket = TokenBucket.full(requests, per_seconds, now)
            self._buckets[contract] = bucket
        return bucket.take(now)

    async def acquire(self, contract: str, requests: int, per_seconds: int, now: float) -> int:
        """:meth:`take` as the :class:`RateLimits` seam has it."""
        return self.take(contract, requests, per_seconds, now)

    def retain(self, contracts: set[str]) -> None:
        """Drop buckets of contracts no longer loaded, so memory follows the contract set."""
        for contract in set(self._buckets) - contracts:
            del self._buckets[contract]

"""The replay window for client assertions and exchange messages (protocol 3.0).

A (``iss``, ``jti``) pair is remembered until ``exp`` + 30 s. The cache is
bounded: when it is full of unexpired ids it refuses new ones (fail closed)
rather than forgetting an id that could then be replayed.
"""

from __future__ import annotations

import heapq
from typing import Final, Protocol

from gateway.errors import Overloaded
from gateway.jose import CLOCK_SKEW_SECONDS

# Ten minutes of traffic at more than 1,500 exchanges a second, in a few hundred MB.
DEFAULT_CAPACITY: Final = 1_000_000


class ReplayCache(Protocol):
    """Where spent ids live; a shared store (PostgreSQL, Redis) can implement it."""

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Record (``issuer``, ``jti``) as spent; False if it was spent before."""

    def __len__(self) -> int:
        """How many ids are remembered now."""


class MemoryReplayCache:
    """An in-process replay cache: a dict for lookups and a heap for expiry."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._seen: dict[tuple[str, str], int] = {}
        self._expiries: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now: int) -> None:
        while self._expiries and self._expiries[0][0] < now:
            until, issuer, jti = heapq.heappop(self._expiries)
            if self._seen.get((issuer, jti)) == until:
                del self._seen[(issuer, jti)]

    def spend_now(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Synchronous form of :meth:`spend`, for callers without an event loop."""
        self._forget_expired(now)
        key = (issuer, jti)
        if key in self._seen:
            return False
        if len(self._seen) >= self._capacity:
            # Forgetting an unexpired id would allow its replay: refuse instead.
            raise Overloaded("the replay window is full", retry_after=CLOCK_SKEW_SECONDS)
        until = exp + CLOCK_SKEW_SECONDS
        self._seen[key] = until
        heapq.heappush(self._expiries, (until, issuer, jti))
        return True

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Record (``issuer``, ``jti``) as spent; False if it was spent before."""
        return self.spend_now(issuer, jti, exp, now)

"""The replay window for client assertions and exchange messages (protocol 3.0).

A (``iss``, ``jti``) pair is remembered until ``exp`` + 30 s. The cache is
bounded: when it is full of unexpired ids it refuses new ones (fail closed)
rather than forgetting an id that could then be replayed.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from typing import Final, Protocol

from gateway.errors import Overloaded
from gateway.jose import CLOCK_SKEW_SECONDS

# Ten minutes of traffic at more than 1,500 exchanges a second, in about 150 MB.
DEFAULT_CAPACITY: Final = 1_000_000

# The digests are spread over this many sets (a power of two), so that a set's table,
# reallocated now and then as ids come and go, is small: one set of them all had a table
# of megabytes, and each reallocation moved the process's RSS by that much.
_SHARDS: Final = 64


class ReplayCache(Protocol):
    """Where spent ids live; a shared store (PostgreSQL, Redis) can implement it."""

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Record (``issuer``, ``jti``) as spent; False if it was spent before."""

    def __len__(self) -> int:
        """How many ids are remembered now."""


class MemoryReplayCache:
    """An in-process replay cache: fixed-size id digests, grouped by the second they expire.

    Each id is kept as a keyed 128-bit BLAKE2b digest of the pair, not as the
    pair itself: about 150 bytes an id instead of 250, whatever the length of
    ``jti``, so a full window stays small and steady. The key is random per
    process, so nobody outside can aim two ids at one digest; an accidental
    collision (about 2^-128 per pair) could only refuse a fresh message, never
    admit a replay.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._digest_key = os.urandom(16)
        self._seen: list[set[int]] = [set() for _ in range(_SHARDS)]
        self._count = 0
        # Each remembered digest sits in exactly one bucket: the second it is forgotten after.
        self._buckets: dict[int, list[int]] = {}
        self._bucket_heap: list[int] = []

    def __len__(self) -> int:
        return self._count

    def _digest(self, issuer: str, jti: str) -> int:
        issuer_bytes = issuer.encode("utf-8", "surrogatepass")
        hasher = hashlib.blake2b(
            len(issuer_bytes).to_bytes(4, "big"), digest_size=16, key=self._digest_key
        )
        hasher.update(issuer_bytes)
        hasher.update(jti.encode("utf-8", "surrogatepass"))
        return int.from_bytes(hasher.digest(), "big")

    def _shard(self, digest: int) -> set[int]:
        return self._seen[digest & (_SHARDS - 1)]

    def _forget_expired(self, now: int) -> None:
        while self._bucket_heap and self._bucket_heap[0] < now:
            bucket = self._buckets.pop(heapq.heappop(self._bucket_heap))
            for digest in bucket:
                self._shard(digest).discard(digest)
            self._count -= len(bucket)

    def spend_now(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Synchronous form of :meth:`spend`, for callers without an event loop."""
        self._forget_expired(now)
        digest = self._digest(issuer, jti)
        shard = self._shard(digest)
        if digest in shard:
            return False
        if self._count >= self._capacity:
            # Forgetting an unexpired id would allow its replay: refuse instead.
            raise Overloaded("the replay window is full", retry_after=CLOCK_SKEW_SECONDS)
        until = exp + CLOCK_SKEW_SECONDS
        shard.add(digest)
        self._count += 1
        bucket = self._buckets.get(until)
        if bucket is None:
            self._buckets[until] = [digest]
            heapq.heappush(self._bucket_heap, until)
        else:
            bucket.append(digest)
        return True

    async def spend(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Record (``issuer``, ``jti``) as spent; False if it was spent before."""
        return self.spend_now(issuer, jti, exp, now)

"""The replay window: (iss, jti) remembered until exp + 30 s, bounded, fail closed (3.0)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Overloaded
from gateway.replay import DEFAULT_CAPACITY, MemoryReplayCache, ReplayCache


class TestSpend:
    """spend / spend_now: first use true, any reuse false."""

    async def test_first_then_replay(self, now: int) -> None:
        """The first spend succeeds; the same (iss, jti) again is a replay."""
        cache = MemoryReplayCache()
        assert await cache.spend("social-benefits", "j1", now + 60, now) is True
        assert await cache.spend("social-benefits", "j1", now + 60, now) is False
        assert len(cache) == 1

    async def test_key_is_the_pair(self, now: int) -> None:
        """The same jti from another issuer is another message."""
        cache = MemoryReplayCache()
        assert await cache.spend("a-agency", "j1", now + 60, now)
        assert await cache.spend("b-agency", "j1", now + 60, now)
        assert await cache.spend("a-agency", "j2", now + 60, now)
        assert len(cache) == 3

    def test_protocol(self) -> None:
        """The in-memory cache satisfies the ReplayCache seam."""
        cache: ReplayCache = MemoryReplayCache()
        assert len(cache) == 0

    def test_default_capacity(self) -> None:
        """The default bound is the documented one."""
        assert DEFAULT_CAPACITY == 1_000_000

    @pytest.mark.parametrize("capacity", [0, -1])
    def test_capacity_positive(self, capacity: int) -> None:
        """A cache that can hold nothing is a setup mistake."""
        with pytest.raises(ValueError, match="positive"):
            MemoryReplayCache(capacity)


class TestExpiry:
    """An id is remembered until exp + 30 s, then forgotten."""

    def test_remembered_through_exp_plus_30(self, now: int) -> None:
        """Up to and including exp + 30 the id is still a replay."""
        cache = MemoryReplayCache()
        exp = now + 60
        assert cache.spend_now("iss", "j", exp, now)
        assert cache.spend_now("iss", "j", exp, exp) is False
        assert cache.spend_now("iss", "j", exp, exp + 30) is False

    def test_forgotten_after_exp_plus_30(self, now: int) -> None:
        """One second after exp + 30 the id is forgotten (its message is stale anyway)."""
        cache = MemoryReplayCache()
        exp = now + 60
        cache.spend_now("iss", "j", exp, now)
        cache.spend_now("iss", "other", exp + 1000, now)
        assert len(cache) == 2
        assert cache.spend_now("iss", "j", exp + 200, exp + 31) is True
        assert len(cache) == 2  # "j" forgotten and spent again; "other" kept

    def test_respent_id_keeps_new_expiry(self, now: int) -> None:
        """An id forgotten and spent again is kept until its new exp + 30."""
        cache = MemoryReplayCache()
        cache.spend_now("iss", "j", now, now)
        cache.spend_now("iss", "j", now + 100, now + 31)
        # another spend later runs expiry again: the new entry must survive it
        assert cache.spend_now("iss", "x", now + 500, now + 50) is True
        assert cache.spend_now("iss", "j", now + 100, now + 130) is False
        assert cache.spend_now("iss", "j", now + 100, now + 131) is True


class TestCapacity:
    """Bounded: full of unexpired ids it refuses (Overloaded), never forgets early."""

    def test_full_refuses(self, now: int) -> None:
        """With every slot unexpired, a new id is refused with Overloaded and Retry-After."""
        cache = MemoryReplayCache(capacity=3)
        for jti in ("a", "b", "c"):
            assert cache.spend_now("iss", jti, now + 60, now)
        with pytest.raises(Overloaded) as info:
            cache.spend_now("iss", "d", now + 60, now)
        assert info.value.retry_after == 30
        assert info.value.status == 503
        assert len(cache) == 3

    def test_full_still_detects_replays(self, now: int) -> None:
        """A replay of a remembered id is still reported as such when full."""
        cache = MemoryReplayCache(capacity=1)
        cache.spend_now("iss", "a", now + 60, now)
        assert cache.spend_now("iss", "a", now + 60, now) is False

    async def test_expired_make_room(self, now: int) -> None:
        """Once older ids expire they are forgotten to make room for new ones."""
        cache = MemoryReplayCache(capacity=2)
        await cache.spend("iss", "a", now + 10, now)
        await cache.spend("iss", "b", now + 100, now)
        with pytest.raises(Overloaded):
            await cache.spend("iss", "c", now + 100, now + 40)
        assert await cache.spend("iss", "c", now + 100, now + 41) is True
        assert len(cache) == 2
        # "b" is still remembered, "a" is not
        assert await cache.spend("iss", "b", now + 100, now + 41) is False


class TestDigests:
    """Ids are kept as keyed digests of the pair; that must not change what is a replay."""

    def test_pair_boundary_is_kept(self, now: int) -> None:
        """("ab", "c") and ("a", "bc") are different messages although they concatenate alike."""
        cache = MemoryReplayCache()
        assert cache.spend_now("ab", "c", now + 60, now)
        assert cache.spend_now("a", "bc", now + 60, now)
        assert cache.spend_now("a", "bc", now + 60, now) is False

    def test_any_text_is_accepted(self, now: int) -> None:
        """A lone surrogate or non-ASCII text is an id like any other, not an encoding error."""
        cache = MemoryReplayCache()
        assert cache.spend_now("agência", "\udcff", now + 60, now)
        assert cache.spend_now("agência", "\udcff", now + 60, now) is False

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "a\x00"]),
                st.sampled_from(["j1", "j2", "\x00j1", ""]),
                st.integers(min_value=0, max_value=100),  # exp, relative to the start
                st.integers(min_value=0, max_value=5),  # seconds since the previous spend
            ),
            max_size=60,
        ),
        st.integers(min_value=1, max_value=8),
    )
    def test_same_answers_as_a_plain_model(
        self, spends: list[tuple[str, str, int, int]], capacity: int
    ) -> None:
        """Every spend answers as a dict of pair -> exp + 30 would, Overloaded included."""
        cache = MemoryReplayCache(capacity)
        model: dict[tuple[str, str], int] = {}
        now = 0
        for issuer, jti, exp, step in spends:
            now += step
            model = {pair: until for pair, until in model.items() if until >= now}
            if (issuer, jti) in model:
                expected: bool | None = False
            elif len(model) >= capacity:
                expected = None
            else:
                expected = True
                model[(issuer, jti)] = exp + 30
            if expected is None:
                with pytest.raises(Overloaded):
                    cache.spend_now(issuer, jti, exp, now)
            else:
                assert cache.spend_now(issuer, jti, exp, now) is expected
            assert len(cache) == len(model)

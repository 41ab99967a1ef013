"""Audit records, pseudonyms and audit keys, and the stores the Merkle log lives in.

Store tests run over SQLite and PostgreSQL (``store_url``) unless they are
about one of them (a file path, a server URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.merkle import leaf_hash, node_hash
from gateway.audit.note import NoteSigner
from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.records import (
    AUDIT_KEY_BYTES,
    SCHEMA_VERSION,
    AuditRecord,
    Pseudonymizer,
    generate_audit_key,
    jcs_bytes,
    load_audit_key,
    new_record_identity,
    parse_audit_keys,
    record_time,
    rotate_audit_key,
)
from gateway.audit.store import (
    AuditStoreError,
    PendingEntry,
    SqliteAuditStore,
    open_store,
)
from gateway.errors import AuditUnavailable, SetupError
from gateway.keys import b64url, b64url_decode
from tests.stores import (
    END_USER,
    ORIGIN,
    SUBJECT,
    T0,
    LogFactory,
    all_leaves,
    append_all,
    break_writes,
    check_tree,
    heal_writes,
    logs,
    make_log,
    make_record,
    opened_store,
    raw_db,
    store_url,
)

__all__ = ["logs", "store_url"]  # fixtures used by name

KEY = bytes(range(32))
KEY_2 = bytes(range(1, 33))
KEY_3 = bytes(range(2, 34))


def one(key: bytes = KEY) -> Pseudonymizer:
    return Pseudonymizer({1: key})


class TestRecords:
    """Audit records: identity, time format, leaf bytes."""

    def test_identity(self) -> None:
        """record_id and salt are fresh 128-bit base64url values."""
        first, second = new_record_identity(), new_record_identity()
        assert len(b64url_decode(first["record_id"])) == 16
        assert len(b64url_decode(first["salt"])) == 16
        assert first["record_id"] != second["record_id"]
        assert first["salt"] != second["salt"]

    def test_record_time(self) -> None:
        """RFC 3339 UTC with milliseconds, ending in Z, always four-digit years."""
        assert record_time(1_795_694_400.1234) == "2026-11-26T12:00:00.123Z"
        assert record_time(0) == "1970-01-01T00:00:00.000Z"
        year_999 = datetime(999, 1, 1, tzinfo=UTC).timestamp()
        assert record_time(year_999) == "0999-01-01T00:00:00.000Z"

    @given(st.floats(min_value=-62_135_596_800, max_value=253_402_300_799))
    def test_record_time_is_isoformat(self, now: float) -> None:
        """The same text as datetime's own ISO 8601 rendering, for any time of years 1-9999."""
        moment = datetime.fromtimestamp(now, UTC)
        expected = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert record_time(now) == expected

    def test_leaf_bytes_omit_absent_members(self) -> None:
        """Absent members are left out of the leaf; schema_version is always there."""
        record = AuditRecord(
            **new_record_identity(),
            time=record_time(0),
            kind="refusal",
            direction="inbound",
            outcome="refused",
            status=401,
            problem="token-invalid",
        )
        leaf = json.loads(record.leaf_bytes())
        assert leaf["schema_version"] == SCHEMA_VERSION
        assert leaf["problem"] == "token-invalid"
        for absent in ("subject", "consumer", "index", "fields"):
            assert absent not in leaf

    def test_strict_model(self) -> None:
        """Unknown members and bad kinds are refused; records are frozen."""
        base: dict[str, Any] = {
            **new_record_identity(),
            "time": record_time(0),
            "kind": "exchange",
            "direction": "inbound",
            "outcome": "ok",
            "status": 200,
        }
        with pytest.raises(ValueError, match="Extra inputs"):
            AuditRecord.model_validate({**base, "body": {"national_id": SUBJECT}})
        with pytest.raises(ValueError, match="kind"):
            AuditRecord.model_validate({**base, "kind": "other"})
        with pytest.raises(ValueError, match="direction"):
            AuditRecord.model_validate({**base, "direction": "sideways"})
        record = AuditRecord(**base)
        with pytest.raises(ValueError, match="frozen"):
            record.status = 500  # type: ignore[misc]

    def test_no_clear_subject_in_leaf(self) -> None:
        """Built with the Pseudonymizer, the leaf holds neither subject nor end user in clear."""
        pseudonymize = one()
        leaf = make_record(pseudonymize=pseudonymize).leaf_bytes()
        assert SUBJECT.encode() not in leaf
        assert END_USER.encode() not in leaf
        assert pseudonymize(SUBJECT).encode() in leaf
        assert pseudonymize(END_USER).encode() in leaf

    def test_leaf_is_jcs(self) -> None:
        """The leaf is the record's RFC 8785 (JCS) serialisation (protocol 6)."""
        record = make_record().at_index(12)
        leaf = record.leaf_bytes()
        assert leaf == rfc8785.dumps(record.model_dump(exclude_none=True))
        assert leaf == rfc8785.dumps(json.loads(leaf))
        assert b" " not in leaf.replace(b"benefit eligibility", b"")

    @settings(max_examples=300, deadline=None)
    @given(
        members=st.dictionaries(
            st.text(max_size=8),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(min_value=-(2**60), max_value=2**60)
                # Lone surrogates too: the fast path must hand them to rfc8785.
                | st.text()
                | st.text(alphabet=st.characters(categories=["Cs", "L", "Cc"])),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3)
                ),
                max_leaves=8,
            ),
            max_size=6,
        )
    )
    def test_jcs_bytes_equal_rfc8785(self, members: dict[str, Any]) -> None:
        """The fast path gives rfc8785's bytes for any such members, or rfc8785's refusal."""
        try:
            expected = bytes(rfc8785.dumps(members))
        except rfc8785.CanonicalizationError:
            with pytest.raises(rfc8785.CanonicalizationError):
                jcs_bytes(members)
            return
        assert jcs_bytes(members) == expected

    def test_jcs_bytes_of_escapes_and_non_bmp_keys(self) -> None:
        """Control characters, quotes, U+2028 and keys that sort differently in UTF-16."""
        members = {"\ue000": 1, "\U0001f600": 2, "a": '\x00\x1f\x7f"\\\u2028\U0001f600'}
        assert jcs_bytes(members) == bytes(rfc8785.dumps(members))
        assert jcs_bytes({"n": 2**53 - 1}) == b'{"n":9007199254740991}'
        with pytest.raises(rfc8785.IntegerDomainError):
            jcs_bytes({"n": 2**53})

    def test_at_index(self) -> None:
        """A record placed in the log carries its index; the original is unchanged."""
        record = make_record()
        placed = record.at_index(7)
        assert record.index is None
        assert placed.index == 7
        assert json.loads(placed.leaf_bytes())["index"] == 7
        assert placed.model_copy(update={"index": None}) == record
        assert record.at_index(8).leaf_bytes() != placed.leaf_bytes()


class TestPseudonymizer:
    """HMAC-SHA-256 pseudonyms under the audit key, by epoch."""

    def test_deterministic(self) -> None:
        """The same key and id give the same pseudonym (an officer can search by it)."""
        assert one()(SUBJECT) == one()(SUBJECT)

    def test_key_dependent(self) -> None:
        """Another key gives another pseudonym; another id too."""
        assert one()(SUBJECT) != one(KEY_2)(SUBJECT)
        assert one()(SUBJECT) != one()(SUBJECT + "0")

    def test_value(self) -> None:
        """The pseudonym is base64url(HMAC-SHA-256(newest key, id)) without padding."""
        expected = b64url(hmac.new(KEY_2, SUBJECT.encode(), hashlib.sha256).digest())
        assert Pseudonymizer({1: KEY, 2: KEY_2})(SUBJECT) == expected
        assert "=" not in expected

    def test_epochs(self) -> None:
        """Epochs are listed oldest first; the newest signs new pseudonyms, gaps allowed."""
        pseudonymize = Pseudonymizer({5: KEY_3, 1: KEY, 2: KEY_2})
        assert pseudonymize.epochs == (1, 2, 5)
        assert pseudonymize.epoch == 5
        assert pseudonymize(SUBJECT) == one(KEY_3)(SUBJECT)

    def test_all_pseudonyms_newest_first(self) -> None:
        """A search tries every live epoch, newest first."""
        pseudonymize = Pseudonymizer({2: KEY_2, 1: KEY, 3: KEY_3})
        assert pseudonymize.all_pseudonyms(SUBJECT) == [
            one(KEY_3)(SUBJECT),
            one(KEY_2)(SUBJECT),
            one(KEY)(SUBJECT),
        ]

    @pytest.mark.parametrize("size", [0, 16, AUDIT_KEY_BYTES - 1])
    def test_short_key_refused(self, size: int) -> None:
        """A key shorter than 32 bytes is refused, in any epoch."""
        with pytest.raises(ValueError, match="at least 32 bytes"):
            Pseudonymizer({1: bytes(size)})
        with pytest.raises(ValueError, match="at least 32 bytes"):
            Pseudonymizer({1: KEY, 2: bytes(size)})

    def test_no_key_refused(self) -> None:
        with pytest.raises(ValueError, match="no audit key"):
            Pseudonymizer({})

    @pytest.mark.parametrize("epoch", [0, -1])
    def test_epoch_must_be_positive(self, epoch: int) -> None:
        with pytest.raises(ValueError, match="not a positive number"):
            Pseudonymizer({epoch: KEY})


class TestAuditKeyFile:
    """The audit key file: lines of ``EPOCH KEY``, mode 0600, rotated by appending."""

    def test_parse(self) -> None:
        """Epoch lines parse to their keys; blank lines and surrounding space are ignored."""
        text = f"1 {b64url(KEY)}\n\n  2   {b64url(KEY_2)}  \n"
        assert parse_audit_keys(text) == {1: KEY, 2: KEY_2}

    def test_legacy_single_key_is_epoch_1(self) -> None:
        """A file from before epochs holds one bare key: it is epoch 1."""
        assert parse_audit_keys(b64url(KEY) + "\n") == {1: KEY}
        assert parse_audit_keys(f"{b64url(KEY)}\n2 {b64url(KEY_2)}\n") == {1: KEY, 2: KEY_2}

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (f"1 {b64url(KEY)} extra\n", "line 1 is not 'EPOCH KEY'"),
            (f"one {b64url(KEY)}\n", "line 1 is not 'EPOCH KEY'"),
            (f"-1 {b64url(KEY)}\n", "line 1 is not 'EPOCH KEY'"),
            (f"1 {b64url(KEY)}\n\nx y z\n", "line 3 is not 'EPOCH KEY'"),
            (f"1 {b64url(KEY)}\n1 {b64url(KEY_2)}\n", "line 2 repeats epoch 1"),
            (f"{b64url(KEY)}\n1 {b64url(KEY_2)}\n", "line 2 repeats epoch 1"),
        ],
    )
    def test_parse_errors(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_audit_keys(text)

    def test_generate_and_load(self, tmp_path: Path) -> None:
        """A generated key file is 0600, holds epoch 1, and loads to a working pseudonymizer."""
        path = tmp_path / "keys" / "audit.key"
        generate_audit_key(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        epoch, key = path.read_text().split()
        assert epoch == "1"
        assert len(b64url_decode(key)) == AUDIT_KEY_BYTES
        loaded = load_audit_key(path)
        assert loaded.epochs == (1,)
        assert loaded(SUBJECT) == one(b64url_decode(key))(SUBJECT)

    def test_legacy_file_loads(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.key"
        path.write_text(b64url(KEY) + "\n")
        assert load_audit_key(path)(SUBJECT) == one()(SUBJECT)

    def test_generate_refuses_overwrite(self, tmp_path: Path) -> None:
        """An existing audit key is never replaced (it would orphan every pseudonym)."""
        path = tmp_path / "audit.key"
        generate_audit_key(path)
        before = path.read_bytes()
        with pytest.raises(SetupError, match="refusing to overwrite"):
            generate_audit_key(path)
        assert path.read_bytes() == before

    def test_rotate(self, tmp_path: Path) -> None:
        """Rotation appends the next epoch: old keys kept byte for byte, file still 0600."""
        path = tmp_path / "audit.key"
        generate_audit_key(path)
        first = path.read_text()
        old = load_audit_key(path)
        assert rotate_audit_key(path) == 2
        assert rotate_audit_key(path) == 3
        text = path.read_text()
        assert text.startswith(first)
        assert len(text.splitlines()) == 3
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not path.with_name("audit.key.new").exists()
        rotated = load_audit_key(path)
        assert rotated.epochs == (1, 2, 3)
        assert rotated(SUBJECT) != old(SUBJECT)
        # Records made before the rotation stay findable.
        assert rotated.all_pseudonyms(SUBJECT)[-1] == old(SUBJECT)
        assert len(set(rotated.all_pseudonyms(SUBJECT))) == 3

    def test_rotate_legacy_file(self, tmp_path: Path) -> None:
        """A bare-key file rotates to epoch 2 and keeps its key as epoch 1."""
        path = tmp_path / "audit.key"
        path.write_text(b64url(KEY) + "\n")
        path.chmod(0o600)
        assert rotate_audit_key(path) == 2
        keys = parse_audit_keys(path.read_text())
        assert sorted(keys) == [1, 2]
        assert keys[1] == KEY

    def test_rotate_leftover_staging_file(self, tmp_path: Path) -> None:
        """A staging file left by a crash does not block the next rotation."""
        path = tmp_path / "audit.key"
        generate_audit_key(path)
        path.with_name("audit.key.new").write_text("half written")
        assert rotate_audit_key(path) == 2
        assert load_audit_key(path).epochs == (1, 2)

    def test_rotate_refuses_bad_file(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.key"
        path.write_text("1 short\n")
        with pytest.raises(SetupError, match="not an audit key"):
            rotate_audit_key(path)
        assert path.read_text() == "1 short\n"

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"not base64!", "not an audit key"),
            (b64url(bytes(16)).encode(), "at least 32 bytes"),
            (b64url(bytes(32)).encode() + b"==", "not an audit key"),
            ("ключ".encode(), "not an audit key"),
            (b"", "no audit key"),
            (b"0 " + b64url(KEY).encode(), "not a positive number"),
        ],
    )
    def test_load_errors(self, tmp_path: Path, content: bytes, reason: str) -> None:
        """A malformed or short key file is a SetupError naming the file."""
        path = tmp_path / "audit.key"
        path.write_bytes(content)
        with pytest.raises(SetupError, match=reason) as info:
            load_audit_key(path)
        assert info.value.source == str(path)

    def test_load_missing(self, tmp_path: Path) -> None:
        with pytest.raises(SetupError, match="cannot read the audit key"):
            load_audit_key(tmp_path / "absent.key")


class TestLogOverStore:
    """Appending through the log: contiguous, durable, never unlogged."""

    async def test_contiguous_from_zero(self, store_url: str, logs: LogFactory) -> None:
        log = await logs(store_url)
        assert await log.size() == 0
        assert log.healthy()
        assert await append_all(log, [make_record(n) for n in range(5)]) == [0, 1, 2, 3, 4]
        assert await log.size() == 5
        assert await log.store.count() == 5

    async def test_concurrent_appends(self, store_url: str, logs: LogFactory) -> None:
        """200 concurrent appends get distinct, contiguous indices matching their records."""
        log = await logs(store_url)
        records = [make_record(n) for n in range(200)]
        indices = await asyncio.gather(*(log.append(r) for r in records))
        assert sorted(indices) == list(range(200))
        for index, record in zip(indices, records, strict=True):
            assert (await log.read(index)).leaf == record.at_index(index).leaf_bytes()

    async def test_reopen_continues(self, store_url: str, logs: LogFactory) -> None:
        """After close and reopen the records are there and indices continue."""
        signer = NoteSigner.generate(ORIGIN)
        first = await logs(store_url, signer=signer)
        records = [make_record(n) for n in range(3)]
        await append_all(first, records)
        await first.close()
        second = await logs(store_url, signer=signer)
        assert await second.size() == 3
        assert (await second.read(2)).leaf == records[2].at_index(2).leaf_bytes()
        assert await second.append(make_record(9)) == 3

    async def test_close_commits_pending(self, store_url: str, logs: LogFactory) -> None:
        """Appends queued when close is called are committed before the store closes."""
        log = await logs(store_url, every_records=1000)
        pending = [asyncio.ensure_future(log.append(make_record(n))) for n in range(20)]
        await asyncio.sleep(0)
        await log.close()
        assert sorted(await asyncio.gather(*pending)) == list(range(20))
        async with opened_store(store_url) as store:
            assert await store.count() == 20
            assert [c.size for c in await store.checkpoints()] == [20]

    async def test_cancelled_append_still_durable(self, store_url: str, logs: LogFactory) -> None:
        """An append whose caller went away (cancelled) is still written; later ones follow."""
        log = await logs(store_url)
        first = make_record(0)
        waiting = asyncio.ensure_future(log.append(first))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert waiting.cancelled()
        assert await log.append(make_record(1)) == 1
        assert (await log.read(0)).leaf == first.at_index(0).leaf_bytes()
        assert log.healthy()

    async def test_failing_storage(self, store_url: str, logs: LogFactory) -> None:
        """Writes refused by the database: AuditUnavailable (503), unhealthy; then recovery."""
        log = await logs(store_url)
        assert await log.append(make_record(0)) == 0
        await break_writes(log, store_url)
        with pytest.raises(AuditUnavailable) as info:
            await log.append(make_record(1))
        assert info.value.status == 503
        assert not log.healthy()
        assert await log.size() == 1
        await heal_writes(log, store_url)
        assert await log.append(make_record(2)) == 1
        assert log.healthy()

    async def test_cancelled_append_on_failing_store(
        self, store_url: str, logs: LogFactory
    ) -> None:
        """A cancelled append on a failing store does not stop the writer."""
        log = await logs(store_url)
        await break_writes(log, store_url)
        waiting = asyncio.ensure_future(log.append(make_record(0)))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(1))
        await heal_writes(log, store_url)
        assert await log.append(make_record(2)) == 0

    async def test_table_destroyed(self, store_url: str, logs: LogFactory) -> None:
        """A store whose tree table another session dropped fails every append as unavailable."""
        log = await logs(store_url)
        await log.append(make_record(0))
        async with raw_db(store_url) as db:
            await db.execute("DROP TABLE audit_nodes")
        results = await asyncio.gather(
            *(log.append(make_record(n)) for n in range(1, 6)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert not log.healthy()
        assert await log.size() == 1

    async def test_append_before_open(self, store_url: str) -> None:
        """A log that is not open refuses appends with AuditUnavailable."""
        log = make_log(store_url)
        with pytest.raises(AuditUnavailable):
            await log.append(make_record())
        await log.close()

    async def test_append_after_close(self, store_url: str, logs: LogFactory) -> None:
        """A closed log refuses appends with AuditUnavailable (nothing served unlogged)."""
        log = await logs(store_url)
        await log.close()
        with pytest.raises(AuditUnavailable):
            await log.append(make_record())

    async def test_store_closed_under_an_open_log(self, store_url: str, logs: LogFactory) -> None:
        """Appends to a log whose store is gone fail with AuditUnavailable, and never hang."""
        log = await logs(store_url)
        await log.append(make_record(0))
        await log.store.close()
        for number in (1, 2):
            with pytest.raises(AuditUnavailable):
                await asyncio.wait_for(log.append(make_record(number)), 10)
        assert not log.healthy()

    async def test_read_after_close(self, store_url: str, logs: LogFactory) -> None:
        """Reading a closed store fails with the store's own error, not a RuntimeError."""
        log = await logs(store_url)
        await log.append(make_record())
        await log.close()
        with pytest.raises(AuditStoreError):
            await log.read(0)
        with pytest.raises(AuditStoreError):
            await log.store.size()


class TestStoreInterface:
    """Both stores answer the AuditStore calls alike."""

    async def test_batch_larger_than_one_insert_statement(self, store_url: str) -> None:
        """A batch of 300 (SQLite: several multi-row statements) lands whole, in order, hashed."""
        async with opened_store(store_url) as store:
            entries = [PendingEntry(make_record(n), record_time(T0)) for n in range(300)]
            assert await store.append_batch(entries[:1]) == 0
            assert await store.append_batch(entries[1:]) == 1
            leaves = await all_leaves(store)
            assert [leaf.index for leaf in leaves] == list(range(300))
            for leaf, entry in zip(leaves, entries, strict=True):
                assert leaf.leaf == entry.record.at_index(leaf.index).leaf_bytes()
                assert leaf.leaf_hash == leaf_hash(leaf.leaf)
            # Every pair of leaves has its level-1 node, and the deepest full subtree its root.
            level1 = await store.nodes(1, 0, 150)
            hashes = [leaf.leaf_hash for leaf in leaves]
            assert level1 == [(i, node_hash(hashes[2 * i], hashes[2 * i + 1])) for i in range(150)]
            assert len(await store.nodes(8, 0, 2)) == 1

    async def test_two_writers_take_turns(self, store_url: str) -> None:
        """Two stores on one log, appending in turns, build one tree.

        A store appending right after itself uses the border it remembers; after
        the other store it reads the border back. A store that must read a lost
        border node refuses to append rather than build a wrong tree.
        """
        async with opened_store(store_url) as first, opened_store(store_url) as second:
            turns = [first, first, second, first, second, second, second, first]
            size = 0
            for turn, writer in enumerate(turns):
                count = 1 + turn % 3
                batch = [PendingEntry(make_record(size + n), None) for n in range(count)]
                assert await writer.append_batch(batch) == size
                size += count
            await check_tree(first, size)
            async with raw_db(store_url) as db:
                await db.execute("DELETE FROM audit_nodes")
            with pytest.raises(AuditStoreError, match="border node"):
                await second.append_batch([PendingEntry(make_record(size), None)])
            assert await second.size() == size

    async def test_reads(self, store_url: str) -> None:
        """size, count, leaves, nodes and hashes of a store of 6 leaves."""
        async with opened_store(store_url) as store:
            assert await store.size() == 0
            assert await store.append_batch([]) == 0
            assert await store.size() == 0
            entries = [PendingEntry(make_record(n), record_time(T0)) for n in range(6)]
            assert await store.append_batch(entries[:2]) == 0
            assert await store.append_batch(entries[2:]) == 2
            assert (await store.size(), await store.count()) == (6, 6)
            leaves = await all_leaves(store)
            assert [leaf.index for leaf in leaves] == list(range(6))
            hashes = [leaf_hash(leaf.leaf or b"") for leaf in leaves]
            assert [leaf.leaf_hash for leaf in leaves] == hashes
            assert [leaf.index for leaf in await store.leaves(2, 4)] == [2, 3]
            assert await store.leaves(6, 10) == []
            pairs = [node_hash(hashes[i], hashes[i + 1]) for i in (0, 2, 4)]
            assert await store.nodes(1, 0, 10) == list(enumerate(pairs))
            assert await store.nodes(2, 0, 10) == [(0, node_hash(pairs[0], pairs[1]))]
            assert await store.nodes(3, 0, 10) == []
            found = await store.hashes([(0, 5), (1, 2), (2, 0), (2, 1), (0, 6), (4, 0)])
            assert found == {
                (0, 5): hashes[5],
                (1, 2): pairs[2],
                (2, 0): node_hash(pairs[0], pairs[1]),
            }

    async def test_checkpoints(self, store_url: str) -> None:
        """add_checkpoint signs the current size and root, only when the tree grew."""
        async with opened_store(store_url) as store:
            signed: list[tuple[int, bytes]] = []

            def sign(size: int, root: bytes) -> str:
                signed.append((size, root))
                return f"note {size}"

            assert await store.add_checkpoint(sign) is None  # empty tree
            await store.append_batch([PendingEntry(make_record(n), None) for n in range(3)])
            assert await store.add_checkpoint(sign, min_size=4) is None
            first = await store.add_checkpoint(sign)
            assert first is not None
            assert (first.size, first.note) == (3, "note 3")
            assert await store.add_checkpoint(sign) is None  # not grown
            await store.append_batch([PendingEntry(make_record(3), None)])
            second = await store.add_checkpoint(sign)
            assert second is not None
            assert second.size == 4
            assert signed == [(3, first.root), (4, second.root)]
            assert await store.checkpoints() == [first, second]
            assert await store.latest_checkpoint() == second

    async def test_expire(self, store_url: str) -> None:
        """Only leaves whose expiry passed lose their bytes; those without expiry never do."""
        async with opened_store(store_url) as store:
            expiries = [record_time(T0 + 10), record_time(T0 + 20), None]
            await store.append_batch(
                [PendingEntry(make_record(n), e) for n, e in enumerate(expiries)]
            )
            before = await all_leaves(store)
            assert await store.expire(record_time(T0 + 9)) == 0
            assert await store.expire(record_time(T0 + 10)) == 1
            assert await store.expire(record_time(T0 + 10_000)) == 1
            after = await all_leaves(store)
            assert [leaf.leaf is None for leaf in after] == [True, True, False]
            assert [leaf.leaf_hash for leaf in after] == [leaf.leaf_hash for leaf in before]


class TestSqliteFile:
    async def test_unopenable_path(self, tmp_path: Path) -> None:
        """A path that is a directory cannot be opened: SetupError naming it."""
        (tmp_path / "audit.db").mkdir()
        store = SqliteAuditStore(tmp_path / "audit.db")
        with pytest.raises(SetupError, match="cannot open the audit store") as info:
            await store.open()
        assert info.value.source == str(tmp_path / "audit.db")
        await store.close()

    async def test_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.db"
        path.write_bytes(b"this is not a database file" * 100)
        store = SqliteAuditStore(path)
        with pytest.raises(SetupError, match="cannot open the audit store"):
            await store.open()
        await store.close()

    async def test_old_schema_refused(self, tmp_path: Path) -> None:
        """A store from before the Merkle log (table audit_records) is refused, left as it was."""
        path = tmp_path / "audit.db"
        with sqlite3.connect(path) as old:
            old.execute("CREATE TABLE audit_records (idx INTEGER PRIMARY KEY, leaf BLOB)")
            old.execute("INSERT INTO audit_records VALUES (0, x'7b7d')")
        old.close()
        log = make_log(f"sqlite://{path}")
        with pytest.raises(SetupError, match="plain audit table from before the Merkle log"):
            await log.open()
        with sqlite3.connect(path) as check:
            tables = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
        check.close()
        assert tables == {"audit_records"}

    async def test_creates_folders(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "audit.db"
        store = SqliteAuditStore(path)
        await store.open()
        await store.close()
        assert path.is_file()


class TestOpenStore:
    """Store URLs: sqlite:relative.db, sqlite:///absolute.db, postgresql://..."""

    def test_relative(self, tmp_path: Path) -> None:
        store = open_store("sqlite:data/rel.db", tmp_path)
        assert isinstance(store, SqliteAuditStore)
        assert store.path == tmp_path / "data" / "rel.db"

    def test_absolute(self, tmp_path: Path) -> None:
        target = tmp_path / "abs" / "abs.db"
        store = open_store(f"sqlite://{target}", tmp_path / "elsewhere")
        assert isinstance(store, SqliteAuditStore)
        assert store.path == target

    async def test_relative_opens_under_base(self, tmp_path: Path) -> None:
        store = open_store("sqlite:data/rel.db", tmp_path)
        await store.open()
        await store.close()
        assert (tmp_path / "data" / "rel.db").is_file()

    @pytest.mark.parametrize(
        "url", ["postgresql://db.example/audit", "postgres://user:pw@db.example:5433/audit"]
    )
    def test_postgresql(self, tmp_path: Path, url: str) -> None:
        """A PostgreSQL URL gives the PostgreSQL store, connecting only when opened."""
        store = open_store(url, tmp_path)
        assert isinstance(store, PostgresAuditStore)
        assert "pw" not in repr(store)

    async def test_postgresql_unreachable(self, tmp_path: Path) -> None:
        """A server that is not there: SetupError naming audit.store."""
        store = open_store("postgresql://postgres@127.0.0.1:1/audit", tmp_path)
        with pytest.raises(SetupError, match="cannot open the PostgreSQL audit store") as info:
            await store.open()
        assert info.value.source == "audit.store"

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("mysql://db/audit", "unsupported store scheme 'mysql'"),
            ("audit.db", "unsupported store scheme ''"),
            ("file:///tmp/audit.db", "unsupported store scheme 'file'"),
            ("sqlite:", "names no file"),
            ("sqlite://", "names no file"),
        ],
    )
    def test_bad_urls(self, tmp_path: Path, url: str, reason: str) -> None:
        """Other schemes and URLs without a file are SetupErrors naming audit.store."""
        with pytest.raises(SetupError, match=reason) as info:
            open_store(url, tmp_path)
        assert info.value.source == "audit.store"

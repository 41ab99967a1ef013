"""Audit records, pseudonyms and the durable SQLite store (protocol section 6)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from gateway.audit import AuditLog, AuditRecord, Pseudonymizer, SqliteAuditLog, open_audit_log
from gateway.audit.records import (
    AUDIT_KEY_BYTES,
    SCHEMA_VERSION,
    generate_audit_key,
    load_audit_key,
    new_record_identity,
    record_time,
)
from gateway.audit.store import MAX_BATCH
from gateway.errors import AuditUnavailable, SetupError
from gateway.keys import b64url, b64url_decode

SUBJECT = "19800101-1234"
END_USER = "officer-7"
KEY = bytes(range(32))


def make_record(number: int = 0, pseudonymize: Pseudonymizer | None = None) -> AuditRecord:
    """An exchange record; subject and end user pseudonymised under ``pseudonymize``."""
    pseudo = pseudonymize or Pseudonymizer(KEY)
    return AuditRecord(
        **new_record_identity(),
        time=record_time(1_795_694_400 + number),
        kind="exchange",
        direction="inbound",
        outcome="ok",
        status=200,
        consumer="social-benefits",
        provider="tax-authority",
        service="income-records",
        contract="benefits-income-2026",
        contract_version=3,
        purpose="benefit-eligibility",
        client="caseworker-app",
        end_user=pseudo(END_USER),
        subject=pseudo(SUBJECT),
        fields=["national_id", "year"],
        jti=f"jti-{number}",
        latency_us=1234,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteAuditLog]:
    """An open SQLite audit store in a fresh folder, closed after the test."""
    log = SqliteAuditLog(tmp_path / "audit" / "audit.db")
    await log.open()
    yield log
    await log.close()


class TestRecords:
    """Audit records: identity, time format, leaf bytes."""

    def test_identity(self) -> None:
        """record_id and salt are fresh 128-bit base64url values."""
        first, second = new_record_identity(), new_record_identity()
        assert len(b64url_decode(first["record_id"])) == 16
        assert len(b64url_decode(first["salt"])) == 16
        assert first != second

    def test_record_time(self) -> None:
        """RFC 3339 UTC with milliseconds, ending in Z."""
        assert record_time(1_795_694_400.1234) == "2026-11-26T12:00:00.123Z"
        assert record_time(0) == "1970-01-01T00:00:00.000Z"

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
        assert "subject" not in leaf
        assert "consumer" not in leaf

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
        record = AuditRecord(**base)
        with pytest.raises(ValueError, match="frozen"):
            record.status = 500  # type: ignore[misc]

    def test_no_clear_subject_in_leaf(self) -> None:
        """Built with the Pseudonymizer, the leaf holds neither subject nor end user in clear."""
        pseudonymize = Pseudonymizer(KEY)
        leaf = make_record(pseudonymize=pseudonymize).leaf_bytes()
        assert SUBJECT.encode() not in leaf
        assert END_USER.encode() not in leaf
        assert pseudonymize(SUBJECT).encode() in leaf

    def test_leaf_is_jcs(self) -> None:
        """The leaf is the record's RFC 8785 (JCS) serialisation (protocol 6)."""
        record = make_record()
        assert record.leaf_bytes() == rfc8785.dumps(record.model_dump(exclude_none=True))


class TestPseudonymizer:
    """HMAC-SHA-256 pseudonyms under the audit key."""

    def test_deterministic(self) -> None:
        """The same key and id give the same pseudonym (an officer can search by it)."""
        assert Pseudonymizer(KEY)(SUBJECT) == Pseudonymizer(KEY)(SUBJECT)

    def test_key_dependent(self) -> None:
        """Another key gives another pseudonym; another id too."""
        other_key = bytes(reversed(KEY))
        assert Pseudonymizer(KEY)(SUBJECT) != Pseudonymizer(other_key)(SUBJECT)
        assert Pseudonymizer(KEY)(SUBJECT) != Pseudonymizer(KEY)(SUBJECT + "0")

    def test_value(self) -> None:
        """The pseudonym is base64url(HMAC-SHA-256(key, id)) without padding."""
        import hashlib
        import hmac

        expected = b64url(hmac.new(KEY, SUBJECT.encode(), hashlib.sha256).digest())
        assert Pseudonymizer(KEY)(SUBJECT) == expected

    @pytest.mark.parametrize("size", [0, 16, AUDIT_KEY_BYTES - 1])
    def test_short_key_refused(self, size: int) -> None:
        """A key shorter than 32 bytes is refused."""
        with pytest.raises(ValueError, match="at least 32 bytes"):
            Pseudonymizer(bytes(size))

    def test_generate_and_load(self, tmp_path: Path) -> None:
        """A generated key file is 0600 and loads to a working pseudonymizer."""
        path = tmp_path / "keys" / "audit.key"
        generate_audit_key(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = b64url_decode(path.read_text().strip())
        assert len(key) == AUDIT_KEY_BYTES
        assert load_audit_key(path)(SUBJECT) == Pseudonymizer(key)(SUBJECT)

    def test_generate_refuses_overwrite(self, tmp_path: Path) -> None:
        """An existing audit key is never replaced (it would orphan every pseudonym)."""
        path = tmp_path / "audit.key"
        generate_audit_key(path)
        before = path.read_bytes()
        with pytest.raises(SetupError):
            generate_audit_key(path)
        assert path.read_bytes() == before

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"not base64!", "not an audit key"),
            (b64url(bytes(16)).encode(), "at least 32 bytes"),
            (b64url(bytes(32)).encode() + b"==", "not an audit key"),
            ("ключ".encode(), "not an audit key"),
            (b"", "at least 32 bytes"),
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
        """A missing key file is a SetupError."""
        with pytest.raises(SetupError, match="cannot read the audit key"):
            load_audit_key(tmp_path / "absent.key")


class TestSqliteStore:
    """Append-only, durable, group-committed storage."""

    async def test_contiguous_from_zero(self, store: SqliteAuditLog) -> None:
        """Sequential appends get 0, 1, 2, ... and size follows."""
        assert await store.size() == 0
        assert store.healthy()
        indices = [await store.append(make_record(n)) for n in range(5)]
        assert indices == [0, 1, 2, 3, 4]
        assert await store.size() == 5

    async def test_read_exact_bytes(self, store: SqliteAuditLog) -> None:
        """read returns exactly the leaf bytes appended."""
        records = [make_record(n) for n in range(3)]
        for record in records:
            await store.append(record)
        for index, record in enumerate(records):
            assert await store.read(index) == record.leaf_bytes()

    async def test_read_missing(self, store: SqliteAuditLog) -> None:
        """An index never written is a KeyError."""
        await store.append(make_record())
        with pytest.raises(KeyError):
            await store.read(1)
        with pytest.raises(KeyError):
            await store.read(-1)

    async def test_concurrent_appends(self, store: SqliteAuditLog) -> None:
        """200 concurrent appends get distinct, contiguous indices matching their records."""
        records = [make_record(n) for n in range(200)]
        indices = await asyncio.gather(*(store.append(r) for r in records))
        assert sorted(indices) == list(range(200))
        assert await store.size() == 200
        for index, record in zip(indices, records, strict=True):
            assert await store.read(index) == record.leaf_bytes()

    async def test_more_than_one_batch(self, store: SqliteAuditLog) -> None:
        """More concurrent appends than one batch holds are all committed, contiguously."""
        count = MAX_BATCH + 50
        indices = await asyncio.gather(*(store.append(make_record(n)) for n in range(count)))
        assert sorted(indices) == list(range(count))

    async def test_durable_across_reopen(self, tmp_path: Path) -> None:
        """After close and reopen the records are there and indices continue."""
        path = tmp_path / "audit.db"
        first = SqliteAuditLog(path)
        await first.open()
        records = [make_record(n) for n in range(3)]
        for record in records:
            await first.append(record)
        await first.close()
        second = SqliteAuditLog(path)
        await second.open()
        try:
            assert await second.size() == 3
            assert await second.read(2) == records[2].leaf_bytes()
            assert await second.append(make_record(9)) == 3
        finally:
            await second.close()

    async def test_close_commits_pending(self, tmp_path: Path) -> None:
        """Appends queued when close is called are committed before the file closes."""
        path = tmp_path / "audit.db"
        log = SqliteAuditLog(path)
        await log.open()
        pending = [asyncio.ensure_future(log.append(make_record(n))) for n in range(20)]
        await asyncio.sleep(0)
        await log.close()
        assert sorted(await asyncio.gather(*pending)) == list(range(20))
        with sqlite3.connect(path) as check:
            assert check.execute("SELECT COUNT(*) FROM audit_records").fetchone() == (20,)

    async def test_cancelled_append_still_durable(self, store: SqliteAuditLog) -> None:
        """An append whose caller went away (cancelled) is still written; later ones follow it."""
        first = make_record(0)
        waiting = asyncio.ensure_future(store.append(first))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert await store.append(make_record(1)) == 1
        assert await store.read(0) == first.leaf_bytes()
        assert store.healthy()

    async def test_cancelled_append_on_failing_store(self, store: SqliteAuditLog) -> None:
        """A cancelled append on a failing store does not stop the writer."""
        loop = asyncio.get_running_loop()
        conn = store._conn  # private: the fault is injected below the interface
        assert conn is not None
        await loop.run_in_executor(store._executor, conn.execute, "PRAGMA query_only=ON")
        waiting = asyncio.ensure_future(store.append(make_record(0)))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        with pytest.raises(AuditUnavailable):
            await store.append(make_record(1))
        await loop.run_in_executor(store._executor, conn.execute, "PRAGMA query_only=OFF")
        assert await store.append(make_record(2)) == 0

    async def test_read_after_close(self, tmp_path: Path) -> None:
        """Reading a closed store fails with the store's own error, not a RuntimeError."""
        log = SqliteAuditLog(tmp_path / "audit.db")
        await log.open()
        await log.append(make_record())
        await log.close()
        with pytest.raises((KeyError, AuditUnavailable)):
            await log.read(0)

    async def test_append_before_open(self, tmp_path: Path) -> None:
        """A store that is not open refuses appends with AuditUnavailable."""
        log = SqliteAuditLog(tmp_path / "audit.db")
        with pytest.raises(AuditUnavailable):
            await log.append(make_record())
        await log.close()

    async def test_append_after_close(self, tmp_path: Path) -> None:
        """A closed store refuses appends with AuditUnavailable (nothing served unlogged)."""
        log = SqliteAuditLog(tmp_path / "audit.db")
        await log.open()
        await log.close()
        with pytest.raises(AuditUnavailable):
            await log.append(make_record())

    async def test_read_only_storage(self, store: SqliteAuditLog) -> None:
        """When the storage refuses writes, append raises AuditUnavailable and healthy() is False.

        Tests run as root, so chmod cannot make the file unwritable. ``PRAGMA
        query_only`` on the store's own connection makes SQLite refuse every
        write exactly as on read-only storage ("attempt to write a readonly
        database"), through the same code path. It is set on the store's
        writer thread, where the connection is used.
        """
        assert await store.append(make_record(0)) == 0
        loop = asyncio.get_running_loop()
        conn = store._conn
        assert conn is not None
        executor = store._executor
        await loop.run_in_executor(executor, conn.execute, "PRAGMA query_only=ON")
        with pytest.raises(AuditUnavailable) as info:
            await store.append(make_record(1))
        assert info.value.status == 503
        assert not store.healthy()
        assert await store.size() == 1
        # Storage back: the next write succeeds, takes the next index, health recovers.
        await loop.run_in_executor(executor, conn.execute, "PRAGMA query_only=OFF")
        assert await store.append(make_record(2)) == 1
        assert store.healthy()

    async def test_table_destroyed(self, tmp_path: Path) -> None:
        """A store whose table another process dropped fails appends with AuditUnavailable.

        A second connection to the same file (as another process would) drops
        the table; every write of the store then fails inside SQLite.
        """
        path = tmp_path / "audit.db"
        log = SqliteAuditLog(path)
        await log.open()
        try:
            await log.append(make_record(0))
            with sqlite3.connect(path) as vandal:
                vandal.execute("DROP TABLE audit_records")
            results = await asyncio.gather(
                *(log.append(make_record(n)) for n in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, AuditUnavailable) for r in results)
            assert not log.healthy()
        finally:
            await log.close()

    async def test_unopenable_path(self, tmp_path: Path) -> None:
        """A path that is a directory cannot be opened: SetupError naming it."""
        (tmp_path / "audit.db").mkdir()
        log = SqliteAuditLog(tmp_path / "audit.db")
        with pytest.raises(SetupError, match="cannot open the audit store") as info:
            await log.open()
        assert info.value.source == str(tmp_path / "audit.db")
        await log.close()

    def test_protocol(self, tmp_path: Path) -> None:
        """SqliteAuditLog satisfies the AuditLog seam."""
        log: AuditLog = SqliteAuditLog(tmp_path / "audit.db")
        assert log.healthy()


class TestOpenAuditLog:
    """Store URLs: sqlite:relative.db, sqlite:///absolute.db."""

    async def test_relative(self, tmp_path: Path) -> None:
        """sqlite:rel.db is resolved against the base folder."""
        log = await open_audit_log("sqlite:data/rel.db", tmp_path)
        try:
            assert await log.append(make_record()) == 0
        finally:
            await log.close()
        assert (tmp_path / "data" / "rel.db").is_file()

    async def test_absolute(self, tmp_path: Path) -> None:
        """sqlite:///abs.db names an absolute path, whatever the base folder."""
        target = tmp_path / "abs" / "abs.db"
        log = await open_audit_log(f"sqlite://{target}", tmp_path / "elsewhere")
        try:
            await log.append(make_record())
        finally:
            await log.close()
        assert target.is_file()
        assert not (tmp_path / "elsewhere").exists()

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("postgresql://db/audit", "unsupported store scheme"),
            ("audit.db", "unsupported store scheme"),
            ("file:///tmp/audit.db", "unsupported store scheme"),
            ("sqlite:", "names no file"),
            ("sqlite://", "names no file"),
        ],
    )
    async def test_bad_urls(self, tmp_path: Path, url: str, reason: str) -> None:
        """Other schemes and URLs without a file are SetupErrors naming audit.store."""
        with pytest.raises(SetupError, match=reason) as info:
            await open_audit_log(url, tmp_path)
        assert info.value.source == "audit.store"

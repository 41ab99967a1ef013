"""The Merkle audit log over both stores: group commit, proofs, checkpoints, retention, startup.

Protocol section 6. Every test runs over SQLite and over PostgreSQL
(``store_url``); expected hashes and proofs come from a naive transcription
of RFC 9162 section 2.1 (``tests.stores``), not from the code under test.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence

import pytest

from gateway.audit import store as store_module
from gateway.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from gateway.audit.log import MAX_BATCH, AuditLog
from gateway.audit.merkle import (
    EMPTY_ROOT,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit.note import NoteSigner
from gateway.audit.query import RecordQuery
from gateway.audit.records import AuditRecord, record_time
from gateway.audit.store import PendingEntry, StoredCheckpoint
from gateway.audit.verify import verify_log
from gateway.errors import AuditUnavailable, SetupError
from tests.stores import (
    DAY,
    ORIGIN,
    T0,
    Clock,
    LogFactory,
    all_leaves,
    append_all,
    break_writes,
    heal_writes,
    logs,
    make_record,
    mth,
    naive_consistency,
    naive_path,
    opened_store,
    raw_db,
    sequencer_held,
    store_url,
)

__all__ = ["logs", "store_url"]  # fixtures used by name


def count_batches(log: AuditLog) -> list[int]:
    """The returned list gets the size of each batch the log commits, as its observer hears."""
    sizes: list[int] = []

    class Counting:
        def audit_committed(self, waits: Sequence[float]) -> None:
            sizes.append(len(waits))

        def audit_store_error(self) -> None:
            pass

    log.observer = Counting()
    return sizes


async def checkpoints_after_close(url: str) -> list[StoredCheckpoint]:
    async with opened_store(url) as store:
        return await store.checkpoints()


class TestAppend:
    async def test_leaf_is_the_record_at_its_index(self, store_url: str, logs: LogFactory) -> None:
        """Each leaf is the record's JCS bytes with its own index, hashed per RFC 9162."""
        log = await logs(store_url)
        records = [make_record(n) for n in range(6)]
        indices = await append_all(log, records[:3])
        indices += await asyncio.gather(*(log.append(r) for r in records[3:]))
        assert sorted(indices) == list(range(6))
        for index, record in zip(indices, records, strict=True):
            stored = await log.read(index)
            assert stored.index == index
            assert stored.leaf == record.at_index(index).leaf_bytes()
            assert json.loads(stored.leaf)["index"] == index
            assert json.loads(stored.leaf)["jti"] == record.jti
            assert stored.leaf_hash == leaf_hash(stored.leaf)
        assert await log.size() == 6
        assert log.appended == 6

    async def test_read_missing(self, store_url: str, logs: LogFactory) -> None:
        """An index never written is a KeyError."""
        log = await logs(store_url)
        await log.append(make_record())
        for index in (1, 5, -1):
            with pytest.raises(KeyError):
                await log.read(index)

    async def test_group_commit(self, store_url: str, logs: LogFactory) -> None:
        """200 concurrent appends share a few transactions and get contiguous indices."""
        log = await logs(store_url, every_records=10_000)
        batches = count_batches(log)
        records = [make_record(n) for n in range(200)]
        indices = await asyncio.gather(*(log.append(r) for r in records))
        assert sorted(indices) == list(range(200))
        assert sum(batches) == 200
        assert len(batches) <= 3, batches
        for index, record in zip(indices, records, strict=True):
            assert json.loads((await log.read(index)).leaf or b"")["jti"] == record.jti

    async def test_appends_during_a_commit_share_the_next(
        self, store_url: str, logs: LogFactory
    ) -> None:
        """While one transaction waits for the sequencer, new appends queue for the next one."""
        log = await logs(store_url, every_records=10_000)
        batches = count_batches(log)
        taken: list[int] = []
        first_taken = threading.Event()  # the store may take batches on its own thread
        take = log.take

        def counting_take() -> list[PendingEntry]:
            entries = take()
            if entries:
                taken.append(len(entries))
                first_taken.set()
            return entries

        log.take = counting_take  # type: ignore[method-assign]
        async with sequencer_held(store_url):
            first = asyncio.create_task(log.append(make_record(0)))
            assert await asyncio.to_thread(first_taken.wait, 5.0)
            later = [asyncio.create_task(log.append(make_record(n))) for n in range(1, 51)]
            await asyncio.sleep(0.05)
            assert taken == [1]
            assert not first.done()
        assert await first == 0
        assert [await task for task in later] == list(range(1, 51))
        assert taken == batches == [1, 50]

    async def test_checkpoint_between_batches(
        self, store_url: str, logs: LogFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A checkpoint asked for while batches are waiting is signed before they all commit.

        The SQLite writer thread returns after each batch here (its time bound
        set to 0), letting the checkpoint queued behind it run; without the
        bound it would commit every waiting batch first.
        """
        monkeypatch.setattr(store_module, "DRAIN_MAX_SECONDS", 0.0)
        log = await logs(store_url, every_records=10**9)
        total = 4 * MAX_BATCH
        appends = [asyncio.create_task(log.append(make_record(n))) for n in range(total)]
        await asyncio.wait(appends, return_when=asyncio.FIRST_COMPLETED)
        stored = await asyncio.wait_for(log.checkpoint(), 30)
        assert sorted(await asyncio.gather(*appends)) == list(range(total))
        assert stored is not None
        assert MAX_BATCH <= stored.size < total

    async def test_more_than_one_batch(self, store_url: str, logs: LogFactory) -> None:
        """More concurrent appends than one batch holds are split, all committed contiguously."""
        log = await logs(store_url, every_records=10_000)
        batches = count_batches(log)
        count = MAX_BATCH + 40
        indices = await asyncio.gather(*(log.append(make_record(n)) for n in range(count)))
        assert sorted(indices) == list(range(count))
        assert len(batches) >= 2
        assert max(batches) <= MAX_BATCH
        assert await log.size() == count
        report = await verify_log(log.store, log.verifier, ORIGIN)
        assert report.ok, report


class TestProofs:
    async def test_roots_and_proofs_match_rfc9162(self, store_url: str, logs: LogFactory) -> None:
        """Every root, inclusion and consistency proof up to 13 leaves equals RFC 9162's."""
        log = await logs(store_url)
        await append_all(log, [make_record(n) for n in range(13)])
        hashes = [stored.leaf_hash for stored in await all_leaves(log.store)]
        assert len(hashes) == 13
        assert await log.root(0) == EMPTY_ROOT
        for size in range(1, 14):
            root = await log.root(size)
            assert root == mth(hashes[:size])
            for index in range(size):
                proof = await log.inclusion_proof(index, size)
                assert proof == naive_path(index, hashes[:size])
                verify_inclusion(index, size, hashes[index], proof, root)
            for first in range(1, size + 1):
                proof = await log.consistency_proof(first, size)
                assert proof == naive_consistency(first, hashes[:size])
                verify_consistency(first, size, proof, mth(hashes[:first]), root)

    async def test_proof_of_a_wrong_leaf_fails(self, store_url: str, logs: LogFactory) -> None:
        """The proofs served are specific: another leaf hash or index does not verify."""
        log = await logs(store_url)
        await append_all(log, [make_record(n) for n in range(7)])
        leaves = await all_leaves(log.store)
        root = await log.root(7)
        proof = await log.inclusion_proof(3, 7)
        with pytest.raises(ProofError):
            verify_inclusion(3, 7, leaves[4].leaf_hash, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(4, 7, leaves[3].leaf_hash, proof, root)

    async def test_proofs_beyond_the_log_refused(self, store_url: str, logs: LogFactory) -> None:
        """A proof for a tree larger than the log, or an index outside it, is a ProofError."""
        log = await logs(store_url)
        await append_all(log, [make_record(n) for n in range(3)])
        with pytest.raises(ProofError):
            await log.inclusion_proof(0, 4)
        with pytest.raises(ProofError):
            await log.inclusion_proof(3, 3)
        with pytest.raises(ProofError):
            await log.consistency_proof(2, 4)
        with pytest.raises(ProofError):
            await log.consistency_proof(0, 3)
        with pytest.raises(ProofError):
            await log.root(4)


class TestCheckpoints:
    async def test_every_n_records_and_at_close(self, store_url: str, logs: LogFactory) -> None:
        """With every_records=4, ten appends checkpoint at 4 and 8, and close at 10."""
        log = await logs(store_url, every_records=4)
        await append_all(log, [make_record(n) for n in range(10)])
        assert [c.size for c in await log.store.checkpoints()] == [4, 8]
        hashes = [stored.leaf_hash for stored in await all_leaves(log.store)]
        verifier = log.verifier
        await log.close()
        stored = await checkpoints_after_close(store_url)
        assert [c.size for c in stored] == [4, 8, 10]
        for checkpoint in stored:
            signed = open_checkpoint(verifier, checkpoint.note, ORIGIN)
            assert signed.origin == "tax-authority/audit"
            assert signed.size == checkpoint.size
            assert signed.root == checkpoint.root == mth(hashes[: checkpoint.size])

    async def test_concurrent_batch_checkpoints_once(
        self, store_url: str, logs: LogFactory
    ) -> None:
        """One batch past the threshold signs one checkpoint of the whole batch."""
        log = await logs(store_url, every_records=4)
        await asyncio.gather(*(log.append(make_record(n)) for n in range(9)))
        # The writer signs after the batch's appends returned; the next append waits for it.
        assert await log.append(make_record(9)) == 9
        assert [c.size for c in await log.store.checkpoints()] == [9]

    async def test_time_based(self, store_url: str, logs: LogFactory) -> None:
        """With every_seconds short, a grown tree is checkpointed without reaching N."""
        log = await logs(store_url, every_records=1000, every_seconds=0.05)
        await append_all(log, [make_record(n) for n in range(3)])
        for _ in range(100):
            if await log.store.checkpoints():
                break
            await asyncio.sleep(0.02)
        assert [c.size for c in await log.store.checkpoints()] == [3]

    async def test_checkpoint_only_when_grown(self, store_url: str, logs: LogFactory) -> None:
        """checkpoint() signs once per tree size; an unchanged tree gives None."""
        log = await logs(store_url, every_records=1000)
        assert await log.checkpoint() is None  # empty
        await log.append(make_record())
        first = await log.checkpoint()
        assert first is not None
        assert first.size == 1
        assert await log.checkpoint() is None
        await log.append(make_record(1))
        second = await log.checkpoint()
        assert second is not None
        assert second.size == 2
        assert [c.size for c in await log.store.checkpoints()] == [1, 2]

    async def test_latest_checkpoint_of_an_empty_log(
        self, store_url: str, logs: LogFactory
    ) -> None:
        """An empty log's latest checkpoint is a signed size-0 head, not stored."""
        log = await logs(store_url)
        latest = await log.latest_checkpoint()
        assert latest.size == 0
        assert latest.root == EMPTY_ROOT
        signed = open_checkpoint(log.verifier, latest.note, ORIGIN)
        assert (signed.size, signed.root) == (0, EMPTY_ROOT)
        assert await log.store.checkpoints() == []

    async def test_latest_checkpoint_signs_one(self, store_url: str, logs: LogFactory) -> None:
        """With records but no checkpoint yet, latest_checkpoint signs and stores one."""
        log = await logs(store_url, every_records=1000)
        await append_all(log, [make_record(n) for n in range(3)])
        assert await log.store.checkpoints() == []
        latest = await log.latest_checkpoint()
        assert latest.size == 3
        assert latest.root == await log.root(3)
        assert await log.store.checkpoints() == [latest]
        await log.append(make_record(3))
        assert await log.latest_checkpoint() == latest  # the newest stored, not re-signed


class TestRetention:
    @staticmethod
    def retention(contract: str | None) -> int:
        return 1 if contract == "short" else 3650

    async def test_expired_leaf_keeps_its_hash(self, store_url: str, logs: LogFactory) -> None:
        """Past retention the leaf bytes go, the hash stays and every proof still verifies."""
        clock = Clock()
        log = await logs(store_url, clock=clock, retention_days=self.retention, every_records=99)
        contracts = ["short" if n % 3 == 0 else "long" for n in range(8)]
        await append_all(log, [make_record(n, contract=c) for n, c in enumerate(contracts)])
        checkpoint = await log.checkpoint()
        assert checkpoint is not None
        before = await all_leaves(log.store)

        clock.advance(DAY - 1)
        assert await log.store.expire(record_time(clock())) == 0
        clock.advance(1)
        assert await log.store.expire(record_time(clock())) == 3
        assert await log.store.expire(record_time(clock())) == 0

        for index, contract in enumerate(contracts):
            stored = await log.read(index)
            assert stored.leaf_hash == before[index].leaf_hash
            if contract == "short":
                assert stored.leaf is None
            else:
                assert stored.leaf == before[index].leaf
            proof = await log.inclusion_proof(index, checkpoint.size)
            verify_inclusion(index, checkpoint.size, stored.leaf_hash, proof, checkpoint.root)
        assert await log.root(8) == checkpoint.root
        # The filter columns went with the bytes: the record cannot be found by them.
        assert await log.find(RecordQuery(contract="short")) == []
        assert len(await log.find(RecordQuery(contract="long"))) == 5
        assert (await verify_log(log.store, log.verifier, ORIGIN)).ok
        # The next index is unchanged and a new record is kept.
        assert await log.append(make_record(8, contract="short")) == 8
        assert (await log.read(8)).leaf is not None

    async def test_housekeeping_applies_retention(self, store_url: str, logs: LogFactory) -> None:
        """The background task expires leaves by the log's clock."""
        clock = Clock()
        log = await logs(
            store_url,
            clock=clock,
            retention_days=self.retention,
            every_seconds=0.02,
            retention_check_seconds=0,
        )
        await log.append(make_record(0, contract="short"))
        await log.append(make_record(1, contract="long"))
        await asyncio.sleep(0.1)
        assert (await log.read(0)).leaf is not None
        clock.advance(2 * DAY)
        for _ in range(100):
            if (await log.read(0)).leaf is None:
                break
            await asyncio.sleep(0.02)
        assert (await log.read(0)).leaf is None
        assert (await log.read(1)).leaf is not None

    async def test_reopen_after_expiry(self, store_url: str, logs: LogFactory) -> None:
        """Expired leaves do not trip the startup check."""
        signer = NoteSigner.generate(ORIGIN)
        clock = Clock()
        log = await logs(store_url, signer=signer, clock=clock, retention_days=lambda _c: 1)
        await append_all(log, [make_record(n) for n in range(5)])
        await log.close()
        async with opened_store(store_url) as store:
            assert await store.expire(record_time(T0 + 2 * DAY)) == 5
        again = await logs(store_url, signer=signer, clock=clock)
        assert await again.append(make_record(5)) == 5


async def closed_log_of(url: str, logs: LogFactory, signer: NoteSigner, size: int) -> None:
    """Write ``size`` records with ``signer`` and close (a checkpoint of ``size`` at close)."""
    log = await logs(url, signer=signer, every_records=1000)
    await append_all(log, [make_record(n) for n in range(size)])
    await log.close()
    assert [c.size for c in await checkpoints_after_close(url)] == [size]


class TestStartupCheck:
    async def test_reopen_continues(self, store_url: str, logs: LogFactory) -> None:
        """A sound log reopens with its key; indices continue; the next checkpoint is consistent."""
        signer = NoteSigner.generate(ORIGIN)
        await closed_log_of(store_url, logs, signer, 5)
        log = await logs(store_url, signer=signer, every_records=1000)
        assert await log.append(make_record(5)) == 5
        old_root = (await log.store.checkpoints())[0].root
        proof = await log.consistency_proof(5, 6)
        verify_consistency(5, 6, proof, old_root, await log.root(6))

    async def test_truncated(self, store_url: str, logs: LogFactory) -> None:
        """Leaves cut from the tail below the last checkpoint: refused as shorter."""
        signer = NoteSigner.generate(ORIGIN)
        await closed_log_of(store_url, logs, signer, 10)
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_leaves WHERE idx >= 7")
        with pytest.raises(SetupError, match=r"shorter.*truncated"):
            await logs(store_url, signer=signer)

    async def test_row_deleted_in_the_middle(self, store_url: str, logs: LogFactory) -> None:
        """A leaf row deleted below the tail: refused (count and indices disagree)."""
        signer = NoteSigner.generate(ORIGIN)
        await closed_log_of(store_url, logs, signer, 10)
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_leaves WHERE idx = 3")
        with pytest.raises(SetupError, match="records were deleted"):
            await logs(store_url, signer=signer)

    @pytest.mark.parametrize(
        ("table", "where"),
        [
            # Size 11 = leaves [0, 8) + [8, 10) + [10]: the root folds these three hashes.
            ("audit_nodes", "level = 3 AND idx = 0"),
            ("audit_nodes", "level = 1 AND idx = 4"),
            ("audit_leaves", "idx = 10"),
        ],
        ids=["node-3-0", "node-1-4", "leaf-10"],
    )
    async def test_root_changed(
        self, store_url: str, logs: LogFactory, table: str, where: str
    ) -> None:
        """A stored hash the checkpoint's root depends on was altered: refused."""
        signer = NoteSigner.generate(ORIGIN)
        await closed_log_of(store_url, logs, signer, 11)
        column = "hash" if table == "audit_nodes" else "leaf_hash"
        async with raw_db(store_url) as db:
            await db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", bytes(32))  # noqa: S608
        with pytest.raises(SetupError, match="no longer has the root"):
            await logs(store_url, signer=signer)

    async def test_node_missing(self, store_url: str, logs: LogFactory) -> None:
        """A stored node the checkpoint's root needs was deleted: refused with SetupError."""
        signer = NoteSigner.generate(ORIGIN)
        await closed_log_of(store_url, logs, signer, 11)
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_nodes WHERE level = 3 AND idx = 0")
        with pytest.raises(SetupError, match="altered"):
            await logs(store_url, signer=signer)

    async def test_other_log_key(self, store_url: str, logs: LogFactory) -> None:
        """Opened with another log key, the last checkpoint does not verify: refused."""
        await closed_log_of(store_url, logs, NoteSigner.generate(ORIGIN), 3)
        with pytest.raises(SetupError, match="does not verify with the log key"):
            await logs(store_url, signer=NoteSigner.generate(ORIGIN))

    async def test_checkpoint_signed_by_another_key(self, store_url: str, logs: LogFactory) -> None:
        """A checkpoint row replaced by one another key signed (same head): refused."""
        signer = NoteSigner.generate(ORIGIN)
        await closed_log_of(store_url, logs, signer, 3)
        (checkpoint,) = await checkpoints_after_close(store_url)
        forged = sign_checkpoint(
            NoteSigner.generate(ORIGIN), Checkpoint(ORIGIN, 3, checkpoint.root)
        )
        async with raw_db(store_url) as db:
            await db.execute("UPDATE audit_checkpoints SET note = ? WHERE size = 3", forged)
        with pytest.raises(SetupError, match="does not verify"):
            await logs(store_url, signer=signer)

    async def test_append_past_a_missing_border_node(
        self, store_url: str, logs: LogFactory
    ) -> None:
        """A node deleted past the last checkpoint: appends fail as unavailable, never hang."""
        signer = NoteSigner.generate(ORIGIN)
        log = await logs(store_url, signer=signer, every_records=1000)
        await append_all(log, [make_record(n) for n in range(8)])
        await log.checkpoint()
        await append_all(log, [make_record(n) for n in range(8, 11)])
        await log.close()
        # Size 11's border is (3,0), (1,4), (0,10); the checkpoint of 11 taken at close
        # is deleted too, so the startup check (against size 8) passes.
        async with raw_db(store_url) as db:
            await db.execute("DELETE FROM audit_checkpoints WHERE size = 11")
            await db.execute("DELETE FROM audit_nodes WHERE level = 1 AND idx = 4")
        log = await logs(store_url, signer=signer)
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(log.append(make_record(11)), 5)
        assert not log.healthy()
        assert await log.size() == 11
        await asyncio.wait_for(log.close(), 5)


class TestFailingStore:
    async def test_append_refused_and_nothing_stored(
        self, store_url: str, logs: LogFactory
    ) -> None:
        """Writes failing in the database: AuditUnavailable, unhealthy, nothing kept; recovery."""
        log = await logs(store_url, every_records=1000)
        assert await log.append(make_record(0)) == 0
        assert log.healthy()
        async with raw_db(store_url) as db:
            nodes_before = await db.fetch("SELECT COUNT(*) FROM audit_nodes")
        await break_writes(log, store_url)
        results = await asyncio.gather(
            *(log.append(make_record(n)) for n in range(1, 6)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert all(r.status == 503 for r in results if isinstance(r, AuditUnavailable))
        assert not log.healthy()
        assert await log.size() == 1
        assert await log.store.count() == 1
        async with raw_db(store_url) as db:
            assert await db.fetch("SELECT COUNT(*) FROM audit_nodes") == nodes_before
        await heal_writes(log, store_url)
        assert await log.append(make_record(9)) == 1
        assert log.healthy()
        assert json.loads((await log.read(1)).leaf or b"")["jti"] == "jti-9"
        assert (await verify_log(log.store, log.verifier, ORIGIN)).ok

    @pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
    async def test_connections_cut(self, store_url: str, logs: LogFactory) -> None:
        """PostgreSQL: after the server ends the log's sessions, appends recover.

        An append may fail (AuditUnavailable) on a connection the server just
        closed; none hangs or is half-written, and the log is writable again.
        """
        log = await logs(store_url)
        assert await log.append(make_record(0)) == 0
        schema = store_url.rsplit("application_name=", 1)[1]
        async with raw_db(store_url) as db:
            ended = await db.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = ? AND pid <> pg_backend_pid()",
                schema,
            )
        assert ended
        assert all(row[0] for row in ended)
        outcomes: list[int | BaseException] = []
        for n in range(1, 6):
            try:
                outcomes.append(await asyncio.wait_for(log.append(make_record(n)), 10))
            except AuditUnavailable as exc:
                outcomes.append(exc)
        assert isinstance(outcomes[-1], int)
        assert log.healthy()
        written = [value for value in outcomes if isinstance(value, int)]
        assert written == list(range(1, len(written) + 1))
        assert await log.store.count() == await log.size() == len(written) + 1


def test_records_used_here_are_valid() -> None:
    """The helper records validate and never carry a clear subject."""
    record = make_record(3)
    assert isinstance(record, AuditRecord)
    assert b"19800101-1234" not in record.leaf_bytes()
    assert record.time == record_time(T0 + 3)

"""The tamper-evident audit log: group-committed appends, signed checkpoints, proofs.

:class:`AuditLog` is what the exchange pipeline and the officer API use. An
append returns only once its record is committed, in a transaction it shares
with whatever other appends were waiting (one fsync for many exchanges). A
failed commit fails every append in it with ``AuditUnavailable``, so nothing is
answered unlogged.

Checkpoints (C2SP signed notes over the tree's size and root) are written
every ``checkpoint_every_records`` appends, every ``checkpoint_every_seconds``
when the tree grew, and at shutdown. On start the log refuses a store that is
shorter than its last checkpoint or whose tree no longer has that root, which
is what a crash can never produce and tampering always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from gateway.audit.merkle import (
    ProofError,
    assemble_proof,
    border_nodes,
    consistency_proof_plan,
    inclusion_proof_plan,
    plan_keys,
    root_from_border,
)
from gateway.audit.note import NoteError, NoteSigner, NoteVerifier
from gateway.audit.query import RecordQuery
from gateway.audit.records import AuditRecord, record_time
from gateway.audit.store import (
    AuditStore,
    AuditStoreError,
    PendingEntry,
    StoredCheckpoint,
    StoredLeaf,
)
from gateway.errors import AuditUnavailable, SetupError
from gateway.observability import get_logger

# Appends committed in one transaction at most; bounds one batch's latency.
MAX_BATCH = 512


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to sign a checkpoint and when to apply retention."""

    every_records: int = 1000
    every_seconds: float = 10.0
    retention_check_seconds: float = 3600.0


RetentionDays = Callable[[str | None], int]


class AuditObserver(Protocol):
    """Who is told about commits and store failures (the gateway's metrics).

    Calls are made from the writer task and must be quick; the audit package
    itself knows nothing of Prometheus.
    """

    def audit_committed(self, waits: Sequence[float]) -> None:
        """One group commit; ``waits[i]`` is how long record i waited to be durable."""

    def audit_store_error(self) -> None:
        """A commit failed, or background work on the store (checkpoint, retention) did."""


class _NoObserver:
    def audit_committed(self, waits: Sequence[float]) -> None:
        pass

    def audit_store_error(self) -> None:
        pass


# An append waiting to be committed: its entry, the future its caller awaits, and
# its perf_counter() reading at append().
_Pending = tuple[PendingEntry, asyncio.Future[int], float]


class AuditLog:
    """One agency's Merkle audit log over an :class:`AuditStore`.

    It is the store's :class:`~gateway.audit.store.AppendQueue`: the store's
    writer takes batches with :meth:`take` and reports each with
    :meth:`settle`, possibly from its own thread, so those two are
    thread-safe and hand results back to the event loop.
    """

    def __init__(
        self,
        store: AuditStore,
        origin: str,
        signer: NoteSigner,
        *,
        retention_days: RetentionDays = lambda _contract: 3650,
        policy: CheckpointPolicy | None = None,
        clock: Callable[[], float] = time.time,
        observer: AuditObserver | None = None,
    ) -> None:
        self.store = store
        self.origin = origin
        self._signer = signer
        self.verifier = NoteVerifier.from_verifier_key(signer.verifier_key())
        self._retention_days = retention_days
        self._policy = policy or CheckpointPolicy()
        self.clock = clock
        self.observer: AuditObserver = observer or _NoObserver()
        # Appends not yet taken by the writer, and the batch it is committing.
        self._pending: list[_Pending] = []
        self._taken: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._healthy = True
        self._closing = False
        # Records taken for commit since the last checkpoint (guarded by _pending_lock).
        self._since_checkpoint = 0
        self.last_checkpoint_time: float | None = None
        self.opened_at: float | None = None
        self.appended = 0
        # Records in the tree as last seen by this log (at open, then after each commit).
        self.tree_size = 0
        self._log = get_logger(component="audit", origin=origin)

    # -- life cycle --------------------------------------------------------

    async def open(self) -> None:
        """Open the store, check it against its last checkpoint, start the writer."""
        await self.store.open()
        try:
            await self._check_against_checkpoint()
        except BaseException:
            await self.store.close()
            raise
        self.opened_at = self.clock()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._write_loop(self._wakeup), name="audit-writer"),
            asyncio.create_task(self._housekeeping(), name="audit-checkpoints"),
        ]

    async def _check_against_checkpoint(self) -> None:
        try:
            # In this order, so that appends by other writers meanwhile cannot look like
            # missing records: every index below a size once read stays committed.
            latest = await self.store.latest_checkpoint()
            size = await self.store.size()
            count = await self.store.count(below=size)
        except AuditStoreError as exc:
            raise SetupError(self.origin, f"cannot read the audit store: {exc}") from exc
        self.tree_size = size
        if count != size:
            raise SetupError(
                self.origin,
                f"the audit store has {count} records but indices up to {size - 1}: "
                "records were deleted; run `gateway audit verify`",
            )
        if latest is None:
            if size == 0:  # an empty tree is covered without a checkpoint
                self.last_checkpoint_time = self.clock()
            return
        try:
            signed = open_checkpoint(self.verifier, latest.note, self.origin)
        except (NoteError, ValueError) as exc:
            raise SetupError(
                self.origin, f"the last checkpoint does not verify with the log key: {exc}"
            ) from exc
        if size < signed.size:
            raise SetupError(
                self.origin,
                f"the audit log is shorter than its last checkpoint ({size} records, "
                f"checkpoint of {signed.size}): it was truncated; run `gateway audit verify`",
            )
        try:
            root = await self.root(signed.size)
        except ProofError as exc:  # a node the root needs is gone: no crash does that
            raise SetupError(
                self.origin,
                f"the audit tree of its checkpoint of {signed.size} records cannot be rebuilt "
                f"({exc}): the log was altered; run `gateway audit verify`",
            ) from exc
        except AuditStoreError as exc:
            raise SetupError(self.origin, f"cannot read the audit store: {exc}") from exc
        if root != signed.root:
            raise SetupError(
                self.origin,
                f"the audit tree no longer has the root of its checkpoint of {signed.size} "
                "records: the log was altered; run `gateway audit verify`",
            )
        self.last_checkpoint_time = self.clock()

    async def close(self) -> None:
        """Commit what is pending, sign a final checkpoint, release the store."""
        if self._wakeup is not None:
            self._closing = True
            self._wakeup.set()
            writer, *others = self._tasks
            await writer
            for task in others:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks = []
            self._wakeup = None
            with contextlib.suppress(AuditStoreError):
                await self.checkpoint()
        await self.store.close()

    def healthy(self) -> bool:
        """False after a failed commit until a later one succeeds."""
        return self._healthy

    # -- appending ---------------------------------------------------------

    async def append(self, record: AuditRecord) -> int:
        """Commit ``record`` durably (group commit) and return its index."""
        if self._wakeup is None or self._closing:
            raise AuditUnavailable("the audit log is not open")
        entry = PendingEntry(record, self._expiry(record))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with self._pending_lock:
            self._pending.append((entry, future, time.perf_counter()))
        self._wakeup.set()
        return await future

    def _expiry(self, record: AuditRecord) -> str:
        days = self._retention_days(record.contract)
        written = datetime.fromtimestamp(self.clock(), UTC)
        return record_time((written + timedelta(days=days)).timestamp())

    async def _write_loop(self, wakeup: asyncio.Event) -> None:
        while not (self._closing and not self._pending):
            await wakeup.wait()
            wakeup.clear()
            while self._pending:
                try:
                    await self.store.append_pending(self)
                except Exception as exc:  # noqa: BLE001 - the store could not start: fail them
                    while self.take():
                        self.settle(exc)
                if self._since_checkpoint >= self._policy.every_records:
                    # Reset first: a failed checkpoint must not hold appends back.
                    with self._pending_lock:
                        self._since_checkpoint = 0
                    await self._safe_checkpoint()

    def take(self) -> list[PendingEntry]:
        """The next batch to commit (at most :data:`MAX_BATCH`); thread-safe.

        Empty also when a checkpoint is due: the writer stops, so that the
        checkpoint is signed right after the batch that made it due.
        """
        with self._pending_lock:
            if self._since_checkpoint >= self._policy.every_records:
                self._taken = []
            else:
                self._taken = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                self._since_checkpoint += len(self._taken)
            return [entry for entry, _, _ in self._taken]

    def settle(self, outcome: int | Exception) -> None:
        """Hand the outcome of the batch last taken to the event loop; thread-safe."""
        durable = time.perf_counter()
        batch, self._taken = self._taken, []
        if threading.get_ident() == self._loop_thread:
            self._settled(batch, outcome, durable)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._settled, batch, outcome, durable)

    def _settled(self, batch: list[_Pending], outcome: int | Exception, durable: float) -> None:
        if isinstance(outcome, Exception):
            if self._healthy:
                if isinstance(outcome, AuditStoreError):
                    self._log.error("audit_store_failed", reason=str(outcome), batch=len(batch))
                else:
                    self._log.error("audit_store_failed", batch=len(batch), exc_info=outcome)
            self._healthy = False
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(AuditUnavailable("the audit log cannot be written"))
            self.observer.audit_store_error()
            return
        if not self._healthy:
            self._log.info("audit_store_recovered")
        self._healthy = True
        self.appended += len(batch)
        self.tree_size = max(self.tree_size, outcome + len(batch))
        for offset, (_, future, _) in enumerate(batch):
            if not future.done():
                future.set_result(outcome + offset)
        self.observer.audit_committed([durable - appended for _, _, appended in batch])

    async def _housekeeping(self) -> None:
        """Time-based checkpoints and retention, until cancelled."""
        next_expiry = 0.0
        while True:
            # While unhealthy, probe often: readiness should come back soon after the store.
            await asyncio.sleep(self._policy.every_seconds if self._healthy else 1.0)
            await self._safe_checkpoint()
            if self.clock() >= next_expiry:
                next_expiry = self.clock() + self._policy.retention_check_seconds
                await self._safe(self.store.expire(record_time(self.clock())), "retention")

    async def _safe_checkpoint(self) -> None:
        await self._safe(self.checkpoint(), "checkpoint")

    async def _safe(self, work: Awaitable[object], task: str) -> None:
        """Run background ``work``; a failure is logged, never fatal to the writer."""
        try:
            await work
        except AuditStoreError as exc:
            self.observer.audit_store_error()
            self._log.warning("audit_background_failed", task=task, reason=str(exc))
        except Exception:  # noqa: BLE001 - a bug here must not stop later checkpoints
            self.observer.audit_store_error()
            self._log.exception("audit_background_failed", task=task)

    # -- checkpoints and proofs --------------------------------------------

    async def checkpoint(self) -> StoredCheckpoint | None:
        """Sign a checkpoint of the current tree if it grew since the last one."""

        def sign(size: int, root: bytes) -> str:
            return sign_checkpoint(self._signer, Checkpoint(self.origin, size, root))

        stored = await self.store.add_checkpoint(sign)
        if not self._healthy:  # the store took the log's write lock again
            self._log.info("audit_store_recovered")
            self._healthy = True
        with self._pending_lock:
            self._since_checkpoint = 0
        self.last_checkpoint_time = self.clock()
        return stored

    async def latest_checkpoint(self) -> StoredCheckpoint:
        """The newest checkpoint, signing one first if there is none yet."""
        latest = await self.store.latest_checkpoint()
        if latest is None:
            latest = await self.checkpoint()
        if latest is None:  # an empty log: its checkpoint says so (size 0)
            empty = root_from_border([])
            return StoredCheckpoint(
                0, empty, sign_checkpoint(self._signer, Checkpoint(self.origin, 0, empty))
            )
        return latest

    async def size(self) -> int:
        """How many records the log holds."""
        return await self.store.size()

    async def root(self, size: int) -> bytes:
        """The tree's root hash at ``size``; ``ProofError`` if the store lacks a node."""
        keys = border_nodes(size)
        found = await self.store.hashes(keys)
        if len(found) != len(keys):
            raise ProofError(f"the store lacks tree nodes for size {size}")
        return root_from_border([found[key] for key in keys])

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``tree_size``."""
        await self._require_size(tree_size)
        plan = inclusion_proof_plan(index, tree_size)
        return assemble_proof(plan, await self.store.hashes(plan_keys(plan)))

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """The RFC 9162 consistency proof between tree sizes ``first`` and ``second``."""
        await self._require_size(second)
        plan = consistency_proof_plan(first, second)
        return assemble_proof(plan, await self.store.hashes(plan_keys(plan)))

    async def _require_size(self, tree_size: int) -> None:
        size = await self.store.size()
        if tree_size > size:
            raise ProofError(f"the log holds {size} records, fewer than {tree_size}")

    # -- reading -----------------------------------------------------------

    async def read(self, index: int) -> StoredLeaf:
        """The stored leaf ``index``; ``KeyError`` if there is none."""
        found = await self.store.leaves(index, index + 1)
        if not found:
            raise KeyError(index)
        return found[0]

    async def find(self, query: RecordQuery) -> list[StoredLeaf]:
        """One page of records matching ``query``."""
        return await self.store.find(query)

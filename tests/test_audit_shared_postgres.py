"""Two gateway processes of one agency sharing one PostgreSQL audit log.

Acceptance line: two gateway processes on one PostgreSQL keep one contiguous,
verifiable log.

The tax authority runs twice as ``gateway serve`` (its own OS processes): the
same keys, contracts and registry, the same ``audit.store`` (a fresh schema
of the test server), two listen ports. Only the first is in the registry:
social-benefits' gateway (in this process) calls it, while peers speaking the
wire protocol (``tests.wire.Peer``) call the second directly. Under
concurrent load both are stopped with SIGTERM; in the other case the second
is SIGKILLed mid-load, the first runs on alone, and the second is started
again while the first is still under load. Then a raw asyncpg connection
reads the tables: indices ``0..n-1`` with no gap or repeat, each record where
its leaf says, every answered exchange's audit index naming its own record
and no other answer's, records of both processes interleaved, the last
checkpoint covering the whole log; and ``gateway audit verify`` exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import yaml

from gateway.demo import demo_registry
from gateway.demo.network import BENEFITS, TAX, build_network
from tests.conftest import LiveNetwork, free_port_base
from tests.test_audit_crash import (
    exchange,
    gateway_process,
    in_process,
    kill9,
    run_command,
    wait_ready,
)
from tests.wire import Answer, CraftedRequest, Peer, free_port

CONSUMER_CLIENTS: Final = 6  # social-benefits' clients, through its gateway, to the first
PEER_CLIENTS: Final = 6  # peers speaking the protocol directly to the second
LOAD_SECONDS: Final = 2.0
# Both processes sign checkpoints often, so their checkpoints race as well as their appends.
CHECKPOINT_EVERY_RECORDS: Final = 40
CHECKPOINT_EVERY_SECONDS: Final = 0.5
STOP_TIMEOUT: Final = 20.0
FIRST, SECOND, SECOND_AGAIN = "first", "second", "second-restarted"


# -- the two processes ---------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """A demo network whose tax authority has two configs on one PostgreSQL store."""

    net: LiveNetwork
    first: Path
    second: Path
    first_url: str
    second_url: str
    tmp: Path


def shared_provider(tmp_path: Path, store_url: str) -> Shared:
    """Write a demo network; point the tax authority at ``store_url``; add a second config.

    The second config is the first with another listen port and nothing else
    changed (its ``public_url`` stays the one the registry lists). It lives
    beside the first, so its relative paths name the same files.
    """
    directory = tmp_path / "net"
    demo = build_network(directory, free_port_base(), datetime.now(UTC))
    first = directory / demo["agencies"][TAX]["config"]
    document = yaml.safe_load(first.read_text())
    document["log"]["level"] = "warning"  # an info line per exchange is noise here
    document["audit"].update(
        store=store_url,
        checkpoint_every_records=CHECKPOINT_EVERY_RECORDS,
        checkpoint_every_seconds=CHECKPOINT_EVERY_SECONDS,
    )
    first.write_text(yaml.safe_dump(document, sort_keys=False))
    second_port = free_port()
    document["listen"]["port"] = second_port
    second = first.with_name("gateway-second.yaml")
    second.write_text(yaml.safe_dump(document, sort_keys=False))
    net = LiveNetwork(directory=directory, demo=demo, registry=demo_registry(directory))
    return Shared(
        net=net,
        first=first,
        second=second,
        first_url=net.url(TAX),
        second_url=f"http://127.0.0.1:{second_port}",
        tmp=tmp_path,
    )


@contextlib.contextmanager
def both(shared: Shared) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """Both tax-authority processes, started together on the (empty) store; killed on exit."""
    with (
        gateway_process(shared.first, shared.tmp / "first.log") as first,
        gateway_process(shared.second, shared.tmp / "second.log") as second,
    ):
        yield first, second


async def terminate(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM all at once; each must finish its in-flight work and exit 0."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        code = await asyncio.to_thread(process.wait, STOP_TIMEOUT)
        assert code == 0, f"the gateway exited with status {code} after SIGTERM"


def logs(shared: Shared) -> str:
    """What the gateway processes printed (for failure messages)."""
    return "\n".join(
        path.read_text(errors="replace")
        for path in (shared.tmp / "first.log", shared.tmp / "second.log")
        if path.exists()
    )


# -- load -----------------------------------------------------------------------------


@dataclass
class DirectPeer(Peer):
    """A :class:`Peer` that speaks to a gateway at ``url``, whatever the registry lists."""

    url: str = ""

    @property
    def provider_url(self) -> str:
        """The gateway this peer calls."""
        return self.url


@dataclass(frozen=True)
class Sent:
    """One exchange and what its provider said: the provider's audit index if any."""

    process: str
    status: int  # 0: no HTTP answer (connection refused or cut)
    index: int | None
    jti: str | None
    outcome: str  # "ok" (200), "refusal" (a problem with an audit_id), "none"
    # When it was sent and answered: "load", "alone" (after the kill), "stopping" (after
    # SIGTERM), or "sent->answered" when the phase changed on the way.
    phase: str
    note: str = ""  # a refusal's problem document, for failure messages


@dataclass
class Load:
    """Clients calling both processes until ``stop``; ``phase`` labels each answer."""

    session: aiohttp.ClientSession
    shared: Shared
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    phase: str = "load"
    second_label: str = SECOND
    sent: list[Sent] = field(default_factory=list)

    async def via_consumer(self, number: int) -> None:
        """A social-benefits client: through its gateway to the registry's (first) process."""
        subjects = self.shared.net.demo["subjects"]
        call = 0
        while not self.stop.is_set():
            subject = subjects[(number + call) % len(subjects)]
            call += 1
            phase = self.phase
            answer = await exchange(self.session, self.shared.net.demo, subject)
            phase = self.spanned(phase)
            index = answer.headers.get("X-Provider-Audit-Index")
            self.sent.append(
                Sent(
                    FIRST,
                    answer.status,
                    None if index is None else int(index),
                    answer.headers.get("X-Exchange-Id"),
                    "ok" if answer.status == 200 else "none",
                    phase,
                    "" if answer.status == 200 else answer.raw[:300].decode(errors="replace"),
                )
            )
            if answer.status != 200:
                await asyncio.sleep(0.02)

    async def direct(self, number: int) -> None:
        """A peer gateway: token and sealed exchanges straight to the second process."""
        peer = DirectPeer(self.shared.net, url=self.shared.second_url)
        subjects = self.shared.net.demo["subjects"]
        token: str | None = None
        call = 0
        while not self.stop.is_set():
            subject = subjects[(number + call) % len(subjects)]
            call += 1
            phase, process = self.phase, self.second_label
            try:
                if token is None:
                    token = await peer.token(self.session)
                sealed = peer.seal(peer.claims(token, subject))
                answer = await peer.send(self.session, sealed.jwe, token)
                phase = self.spanned(phase)
            except (aiohttp.ClientError, AssertionError):  # down, or not ready yet
                token = None
                phase = self.spanned(phase)
                self.sent.append(Sent(process, 0, None, None, "none", phase))
                await asyncio.sleep(0.02)
                continue
            self.sent.append(
                direct_answer(peer, answer, sealed, subject, process=process, phase=phase)
            )
            if answer.status != 200:
                token = None
                await asyncio.sleep(0.02)

    def spanned(self, sent: str) -> str:
        """The phase of an answer to a call made in phase ``sent``."""
        return sent if self.phase == sent else f"{sent}->{self.phase}"

    def start(self) -> list[asyncio.Task[None]]:
        """Every client, as tasks."""
        return [
            *(asyncio.create_task(self.via_consumer(n)) for n in range(CONSUMER_CLIENTS)),
            *(asyncio.create_task(self.direct(n)) for n in range(PEER_CLIENTS)),
        ]


def direct_answer(
    peer: DirectPeer,
    answer: Answer,
    sealed: CraftedRequest,
    subject: str,
    *,
    process: str,
    phase: str,
) -> Sent:
    """What a peer learnt: a 200's audit claim (opened and verified), or a refusal's audit_id."""
    if answer.status == 200:
        claims = peer.open(answer, sealed)
        assert claims["body"]["national_id"] == subject
        index = claims["audit"]["index"]
        assert isinstance(index, int), claims["audit"]
        return Sent(process, 200, index, sealed.jti, "ok", phase)
    note = answer.raw[:300].decode(errors="replace")
    audit_id = answer.json.get("audit_id") if answer.problem is not None else None
    if isinstance(audit_id, int):
        return Sent(process, answer.status, audit_id, sealed.jti, "refusal", phase, note)
    return Sent(process, answer.status, None, sealed.jti, "none", phase, note)


# -- the checks -------------------------------------------------------------------------


async def read_log(store_url: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Every leaf (checked against its row) and every checkpoint size, on a raw connection."""
    conn = await asyncpg.connect(store_url)
    try:
        rows = await conn.fetch("SELECT idx, leaf_hash, leaf FROM audit_leaves ORDER BY idx")
        sizes = [row[0] for row in await conn.fetch("SELECT size FROM audit_checkpoints")]
        repeated = await conn.fetchval(
            "SELECT COUNT(*) FROM (SELECT idx FROM audit_leaves GROUP BY idx"
            " HAVING COUNT(*) > 1) AS r"
        )
    finally:
        await conn.close()
    assert repeated == 0
    records = []
    for row in rows:
        leaf = bytes(row["leaf"])
        assert bytes(row["leaf_hash"]) == hashlib.sha256(b"\x00" + leaf).digest(), row["idx"]
        record: dict[str, Any] = json.loads(leaf)
        assert record["index"] == row["idx"]
        records.append(record)
    return records, sorted(int(size) for size in sizes)


def label_switches(owners: dict[int, str]) -> int:
    """How often the writing process changes along the log (by index)."""
    labels = [owners[index] for index in sorted(owners)]
    return sum(a != b for a, b in itertools.pairwise(labels))


async def check_one_log(shared: Shared, store_url: str, sent: list[Sent]) -> dict[int, str]:
    """The log is one contiguous, verifiable tree holding every answer's record; its owners."""
    records, checkpoint_sizes = await read_log(store_url)
    size = len(records)
    # Contiguous: 0..n-1 (read_log checked each leaf names its own row).
    assert [record["index"] for record in records] == list(range(size))
    # No record was written twice (a retried batch would repeat its record ids).
    repeats = Counter(record["record_id"] for record in records)
    assert max(repeats.values()) == 1, repeats.most_common(3)
    exchanged = Counter(record["jti"] for record in records if record["kind"] == "exchange")
    assert max(exchanged.values()) == 1, exchanged.most_common(3)

    # Every answer's index names its own record, and no other answer names the same one.
    # Every 200 carried its index: none was answered without a durable record.
    assert all(s.index is not None for s in sent if s.status == 200)
    indexed = [s for s in sent if s.index is not None]
    claimed = Counter(s.index for s in indexed)
    assert max(claimed.values()) == 1, claimed.most_common(3)
    owners: dict[int, str] = {}
    for answer in indexed:
        assert answer.index is not None
        assert 0 <= answer.index < size, (answer, size)
        record = records[answer.index]
        assert record["provider"] == TAX
        assert record["consumer"] == BENEFITS
        assert record["direction"] == "inbound"
        if answer.outcome == "ok":
            assert (record["kind"], record["outcome"]) == ("exchange", "ok"), record
            assert record["jti"] == answer.jti
        else:
            assert record["kind"] == "refusal", record
            assert record["status"] == answer.status
        owners[answer.index] = answer.process

    # The last checkpoint (signed at shutdown by whichever process stopped last) covers all.
    assert checkpoint_sizes, "no checkpoint was signed"
    assert checkpoint_sizes[-1] == size, (checkpoint_sizes[-3:], size)
    assert len(set(checkpoint_sizes)) == len(checkpoint_sizes)

    verified = await asyncio.to_thread(run_command, "audit", "verify", "--config", shared.first)
    assert verified.returncode == 0, (verified.stdout, verified.stderr, logs(shared))
    assert f"audit log {TAX}/audit: OK, {size} records, " in verified.stdout
    return owners


def assert_interleaved(owners: dict[int, str], first: str, second: str) -> None:
    """Both processes wrote many records, in alternating runs rather than two blocks."""
    mine = {index: owner for index, owner in owners.items() if owner in (first, second)}
    a = sorted(index for index, owner in mine.items() if owner == first)
    b = sorted(index for index, owner in mine.items() if owner == second)
    assert len(a) >= 20, f"{first} answered only {len(a)} exchanges"
    assert len(b) >= 20, f"{second} answered only {len(b)} exchanges"
    # Overlapping ranges, and many alternations: one shared sequence, not one after another.
    assert a[0] < b[-1], (a[:3], b[-3:])
    assert b[0] < a[-1], (b[:3], a[-3:])
    switches = label_switches(mine)
    assert switches >= 10, f"only {switches} alternations between {first} and {second}"


# -- the tests ----------------------------------------------------------------------------


async def test_two_processes_one_log(tmp_path: Path, postgres_store_url: str) -> None:
    """Both under concurrent load, both stopped with SIGTERM: one contiguous verified log."""
    shared = shared_provider(tmp_path, postgres_store_url)
    with in_process(shared.net.directory, shared.net.demo, [BENEFITS], [TAX]):
        async with aiohttp.ClientSession() as session:
            with both(shared) as (first, second):
                await asyncio.gather(
                    wait_ready(session, shared.first_url, first),
                    wait_ready(session, shared.second_url, second),
                )
                load = Load(session, shared)
                clients = load.start()
                try:
                    await asyncio.sleep(LOAD_SECONDS)
                    load.phase = "stopping"
                    await terminate(first, second)  # while the clients are still calling
                finally:
                    load.stop.set()
                    await asyncio.gather(*clients)
    sent = load.sent

    steady = [s for s in sent if s.phase == "load"]
    assert all(s.status in (200, 429) for s in steady), [s for s in steady if s.status != 200]
    owners = await check_one_log(shared, postgres_store_url, sent)
    assert_interleaved(owners, FIRST, SECOND)


async def test_one_killed_mid_load(tmp_path: Path, postgres_store_url: str) -> None:
    """SIGKILL the second mid-load; the first runs on; the second restarts under load.

    The killed process may have died holding the sequencer in an open
    transaction: PostgreSQL rolls it back and the first appends on without a
    gap. The restarted process checks the store against its last checkpoint
    while the first is appending, then joins the same sequence.
    """
    shared = shared_provider(tmp_path, postgres_store_url)
    with in_process(shared.net.directory, shared.net.demo, [BENEFITS], [TAX]):
        async with aiohttp.ClientSession() as session:
            with both(shared) as (first, second):
                await asyncio.gather(
                    wait_ready(session, shared.first_url, first),
                    wait_ready(session, shared.second_url, second),
                )
                load = Load(session, shared)
                clients = load.start()
                try:
                    await asyncio.sleep(LOAD_SECONDS * 0.6)
                    kill9(second)
                    load.phase = "alone"
                    await asyncio.sleep(0.4)
                    load.second_label = SECOND_AGAIN
                    with gateway_process(shared.second, shared.tmp / "second.log") as again:
                        await wait_ready(session, shared.second_url, again)
                        load.phase = "load"
                        await asyncio.sleep(LOAD_SECONDS * 0.4)
                        load.phase = "stopping"
                        await terminate(first, again)
                finally:
                    load.stop.set()
                    await asyncio.gather(*clients)
    sent = load.sent

    # Outside the kill and the stop, both answer everything (the restarted one included).
    steady = [s for s in sent if s.phase == "load"]
    assert all(s.status in (200, 429) for s in steady), [s for s in steady if s.status != 200]
    cut = [s for s in sent if s.process == SECOND and s.phase == "load->alone" and s.status == 0]
    assert cut, "the kill cut no exchange in flight"
    alone = [s for s in sent if s.phase == "alone"]
    assert any(s.process == FIRST and s.status == 200 for s in alone), "the first stalled"
    owners = await check_one_log(shared, postgres_store_url, sent)
    assert_interleaved(owners, FIRST, SECOND)
    restarted = sorted(i for i, owner in owners.items() if owner == SECOND_AGAIN)
    assert restarted, "the restarted process answered nothing"
    # What the first logged after the kill, and all the restarted one logged, follow the
    # killed one's last answered record.
    killed_last = max(i for i, owner in owners.items() if owner == SECOND)
    alone_first = [s.index for s in alone if s.process == FIRST and s.index is not None]
    assert alone_first, "no exchange of the first was logged while it ran alone"
    assert min(alone_first) > killed_last
    assert restarted[0] > killed_last

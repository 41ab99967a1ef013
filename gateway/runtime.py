"""What one running gateway holds: keys, the registry and contracts in force, caches.

Built once at start-up from :class:`~gateway.config.GatewaySettings`; the
registry and the contract directory are re-read when their files change, and
a refused new version never replaces the one in force. The server's periodic
reload lists, reads, parses and verifies in a worker thread; only putting
the result in force runs on the event loop (:meth:`Runtime.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit import AuditLog, Pseudonymizer, open_audit_log
from gateway.audit.records import load_audit_key
from gateway.config import GatewaySettings
from gateway.contracts import Contract, ContractDirLoader, ContractLoad, ContractSet
from gateway.dirwatch import DirectoryWatch
from gateway.errors import SetupError
from gateway.keys import AgencyKeys, load_agency_keys, load_public_key_file
from gateway.metrics import GatewayMetrics
from gateway.observability import get_logger
from gateway.ratelimit import RateLimiter, RateLimits
from gateway.registry import Registry, RegistryCheck, RegistryHolder
from gateway.replay import MemoryReplayCache, ReplayCache
from gateway.state import SharedState, open_shared_state
from gateway.tokens import VerifiedTokenCache

Clock = Callable[[], float]
# (name, mtime_ns, size) of every entry of the contract directory, by name.
DirStamp = tuple[tuple[str, int, int], ...]


@dataclass
class ContractState:
    """The contract set in force and what the last load of the directory refused.

    ``current`` always verifies under the keys of registry ``registry_serial``
    (the serial the directory was last loaded with). ``loader`` keeps the
    parsed files between loads and ``watch`` says when the directory must be
    swept for changes; only reloads use them, one at a time.
    """

    current: ContractSet
    loader: ContractDirLoader
    watch: DirectoryWatch
    problems: tuple[str, ...] = ()
    stamp: DirStamp = ()
    registry_serial: int = -1
    reload_failures: int = 0


@dataclass(frozen=True)
class _ContractReload:
    """A contract directory load, ready to be put in force on the event loop."""

    stamp: DirStamp
    serial: int
    loaded: ContractLoad
    problems: tuple[str, ...]
    # With problems: the set in force minus contracts whose signer is no longer
    # trusted; None when the registry serial did not change (nothing leaves force).
    survivors: ContractSet | None


@dataclass(frozen=True)
class _PendingReload:
    """What one reload found, computed off the event loop; applied by ``_apply_reload``."""

    registry: RegistryCheck
    contracts: _ContractReload | None  # None: neither the directory nor the serial changed
    error: Exception | None  # the contract load failed; raised once the registry is applied


@dataclass
class Runtime:
    """The live state of one gateway instance."""

    settings: GatewaySettings
    keys: AgencyKeys
    registry: RegistryHolder
    contracts: ContractState
    audit: AuditLog
    pseudonymize: Pseudonymizer
    metrics: GatewayMetrics
    replay: ReplayCache
    rate_limiter: RateLimits = field(default_factory=RateLimiter)
    clock: Clock = time.time
    in_flight: int = 0
    # Replay ids and buckets shared with other processes (it is then replay and rate_limiter).
    state: SharedState | None = None
    # Access tokens of ours already verified (protocol 3.2 allows caching them until exp).
    verified_tokens: VerifiedTokenCache = field(default_factory=VerifiedTokenCache)
    # One reload at a time, queued without tying up worker threads: each applies
    # what it found before the next starts reading files.
    _reload_queue: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        # Label checks and the scrape-time gauges read this runtime; the audit log reports to it.
        self.metrics.bind(self)

    @property
    def agency(self) -> str:
        """This gateway's agency id."""
        return self.settings.agency

    @property
    def origin(self) -> str:
        """The audit log's origin line, ``{agency}/audit``."""
        return f"{self.settings.agency}/audit"

    def now(self) -> int:
        """The current time in whole seconds, from the injected clock."""
        return int(self.clock())

    async def close(self) -> None:
        """Close the contracts folder's watch, the audit log and the shared state store.

        The audit log signs a final checkpoint as it closes.
        """
        self.contracts.watch.close()
        try:
            await self.audit.close()
        finally:
            if self.state is not None:
                await self.state.close()

    def trusted(self) -> Registry:
        """The registry in force."""
        return self.registry.current

    def contract(self, contract_id: str) -> Contract | None:
        """The loaded contract ``contract_id`` (in force or not), or None."""
        return self.contracts.current.get(contract_id)

    async def reload(self) -> None:
        """Re-read the registry and contracts if their files changed (keeping the last good).

        Listing, reading, parsing and verifying run in a worker thread: with
        10,000 contract files even the check that nothing changed (a ``stat``
        of each) takes tens of milliseconds, and a load takes seconds; in the
        loop it would stall every exchange. The thread only computes new
        immutable values; putting them in force (plain assignments), counting
        and logging run back on the loop, so a request never sees a half-made
        change.
        """
        async with self._reload_queue:
            now = self.now()
            pending = await asyncio.to_thread(self._prepare_reload, now)
            self._apply_reload(pending, now)

    def _prepare_reload(self, now: int) -> _PendingReload:
        # A worker thread. Reads the registry holder and self.contracts but changes
        # neither (only the watch's own record of sweeps): only _apply_reload does,
        # on the loop, after this has returned.
        check = self.registry.check(now)
        registry = check.found if isinstance(check.found, Registry) else check.based_on
        try:
            contracts = self._prepare_contracts(now, registry)
        except Exception as exc:  # noqa: BLE001 - raised on the loop, after the registry part
            return _PendingReload(check, None, exc)
        return _PendingReload(check, contracts, None)

    def _prepare_contracts(self, now: int, registry: Registry) -> _ContractReload | None:
        state = self.contracts
        serial = registry.serial
        # Asked before the sweep: a change made during it is news at the next reload.
        if not state.watch.sweep_due() and serial == state.registry_serial:
            return None
        stamp, linked = _dir_stamp(self.settings.contracts.dir)
        if stamp == state.stamp and serial == state.registry_serial:
            state.watch.swept(linked=linked)
            return None
        loaded = state.loader.load(registry.signing_keys, now)
        problems = tuple(str(problem) for problem in loaded.problems)
        survivors = None
        if problems and serial != state.registry_serial:
            # A half-edited or bad file must not change what is enforced, but a
            # contract whose signer the registry no longer trusts leaves force now.
            # (Under an unchanged serial every contract in force still verifies.)
            survivors = state.loader.verified(state.current, registry.signing_keys)
        # Only now: a load that raised is tried again at the next reload.
        state.watch.swept(linked=linked)
        return _ContractReload(stamp, serial, loaded, problems, survivors)

    def _apply_reload(self, pending: _PendingReload, now: int) -> None:
        # On the event loop: the only place a reload changes what is in force.
        log = get_logger(agency=self.agency, component="reload")
        result = self.registry.apply(pending.registry, now)
        if result.outcome == "failed":
            self.metrics.reload_failures.labels(source="registry").inc()
            log.warning("registry_reload_refused", reason=result.error)
        elif result.outcome == "reloaded":
            log.info("registry_reloaded", serial=result.serial)
        if pending.error is not None:
            raise pending.error
        if pending.contracts is not None:
            self._apply_contracts(pending.contracts, log)

    def _apply_contracts(self, reload: _ContractReload, log: Any) -> None:
        state = self.contracts
        state.stamp, state.registry_serial = reload.stamp, reload.serial
        if reload.problems:
            state.problems = reload.problems
            state.reload_failures += 1
            self.metrics.reload_failures.labels(source="contracts").inc()
            for problem in reload.problems:
                log.warning("contract_refused", problem=problem)
            if reload.survivors is not None:
                state.current = reload.survivors
            return
        loaded = reload.loaded
        state.current, state.problems = loaded.contracts, ()
        self.rate_limiter.retain(set(loaded.contracts.ids()))
        log.info("contracts_reloaded", count=len(loaded.contracts))


def _dir_stamp(directory: Path) -> tuple[DirStamp, bool]:
    # Every entry (a changed stamp only asks the loader, which skips what is not a
    # contract file), and whether one is a symbolic link (the watch cannot see its
    # target change); ((), False) when the directory cannot be listed. os.scandir
    # rather than Path.iterdir: no Path object per entry, half the time with 10,000
    # files; is_symlink() reads the entry's type from the listing, no system call.
    stamps = []
    linked = False
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    linked = linked or entry.is_symlink()
                    info = entry.stat()
                    stamps.append((entry.name, info.st_mtime_ns, info.st_size))
    except OSError:
        return (), False
    return tuple(sorted(stamps)), linked


async def build_runtime(
    settings: GatewaySettings, clock: Clock = time.time, *, workers: int = 1
) -> Runtime:
    """Load keys, registry, contracts, the audit store and the shared state store.

    ``workers`` is how many processes serve this gateway: with ``state.store:
    auto`` it decides where replay ids and rate-limit buckets live
    (:func:`gateway.state.resolve_state_store`). ``SetupError`` names what is wrong.
    """
    log = get_logger(agency=settings.agency, component="startup")
    now = int(clock())
    passphrase = settings.keys.passphrase()
    keys = load_agency_keys(settings.keys.dir, passphrase, settings.keys.previous_dirs)
    audit_key_path = settings.keys.audit_key
    if audit_key_path is None:  # pragma: no cover - config always resolves a default
        raise SetupError("keys.audit_key", "no audit key configured")
    pseudonymize = load_audit_key(audit_key_path)
    authority = load_public_key_file(settings.registry.authority_key, "sig")
    registry = RegistryHolder(settings.registry.path, authority)
    registry.load(now)
    # Kept by the runtime: the first reload then re-parses only files changed since.
    loader = ContractDirLoader(settings.contracts.dir)
    # Opened and the stamp taken before loading, so a file changed during the load
    # shows as a change next time.
    watch = DirectoryWatch(settings.contracts.dir)
    stamp, linked = _dir_stamp(settings.contracts.dir)
    serial = registry.current.serial
    loaded = loader.load(registry.current.signing_keys, now)
    for problem in loaded.problems:
        log.warning("contract_refused", problem=str(problem))
    watch.swept(linked=linked)
    contracts = ContractState(
        current=loaded.contracts,
        loader=loader,
        watch=watch,
        problems=tuple(str(problem) for problem in loaded.problems),
        stamp=stamp,
        registry_serial=serial,
    )
    state = open_shared_state(settings, workers, clock)
    audit = await open_audit_log(settings, clock)
    if state is not None:
        try:
            await state.open()
        except BaseException:
            await audit.close()
            raise
    return Runtime(
        settings=settings,
        keys=keys,
        registry=registry,
        contracts=contracts,
        audit=audit,
        pseudonymize=pseudonymize,
        metrics=GatewayMetrics(settings.agency),
        # Not ``state or ...``: an empty store has len() 0 and would read as false.
        replay=MemoryReplayCache(settings.limits.replay_cache_size) if state is None else state,
        rate_limiter=RateLimiter() if state is None else state,
        clock=clock,
        state=state,
    )


async def reload_forever(runtime: Runtime) -> None:
    """Poll the registry and contract files; runs until cancelled."""
    interval = min(
        runtime.settings.registry.reload_seconds, runtime.settings.contracts.reload_seconds
    )
    while True:
        await asyncio.sleep(interval)
        try:
            await runtime.reload()
        except Exception:  # noqa: BLE001 - a reload bug must never take the gateway down
            get_logger(agency=runtime.agency).exception("reload_failed")

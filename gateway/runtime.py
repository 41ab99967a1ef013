"""What one running gateway holds: keys, the registry and contracts in force, caches.

Built once at start-up from :class:`~gateway.config.GatewaySettings`; the
registry and the contract directory are re-read when their files change, and
a refused new version never replaces the one in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import AuditLog, Pseudonymizer, open_audit_log
from gateway.audit.records import load_audit_key
from gateway.config import GatewaySettings
from gateway.contracts import Contract, ContractSet, load_contract_dir, verify_signatures
from gateway.errors import SetupError
from gateway.keys import AgencyKeys, load_agency_keys, load_public_key_file
from gateway.metrics import GatewayMetrics
from gateway.observability import get_logger
from gateway.ratelimit import RateLimiter, RateLimits
from gateway.registry import Registry, RegistryHolder
from gateway.replay import MemoryReplayCache, ReplayCache
from gateway.state import SharedState, open_shared_state
from gateway.tokens import VerifiedTokenCache

Clock = Callable[[], float]


@dataclass
class ContractState:
    """The contract set in force and what the last load of the directory refused."""

    current: ContractSet
    problems: tuple[str, ...] = ()
    stamp: tuple[tuple[str, int, int], ...] = ()
    registry_serial: int = -1
    reload_failures: int = 0


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
        """Close the audit log (which signs a final checkpoint) and the shared state store."""
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

    def reload(self) -> None:
        """Re-read the registry and contracts if their files changed (keeping the last good)."""
        log = get_logger(agency=self.agency, component="reload")
        now = self.now()
        result = self.registry.maybe_reload(now)
        if result.outcome == "failed":
            self.metrics.reload_failures.labels(source="registry").inc()
            log.warning("registry_reload_refused", reason=result.error)
        elif result.outcome == "reloaded":
            log.info("registry_reloaded", serial=result.serial)
        self._reload_contracts(now, log)

    def _reload_contracts(self, now: int, log: Any) -> None:
        state = self.contracts
        stamp = _dir_stamp(self.settings)
        serial = self.trusted().serial
        if stamp == state.stamp and serial == state.registry_serial:
            return
        loaded = load_contract_dir(self.settings.contracts.dir, self.trusted().signing_keys, now)
        state.stamp, state.registry_serial = stamp, serial
        problems = tuple(str(problem) for problem in loaded.problems)
        if problems:
            # A half-edited or bad file must not change what is enforced, but a
            # contract whose signer the registry no longer trusts leaves force now.
            state.problems = problems
            state.reload_failures += 1
            self.metrics.reload_failures.labels(source="contracts").inc()
            for problem in problems:
                log.warning("contract_refused", problem=problem)
            keys_of = self.trusted().signing_keys
            state.current = ContractSet.of(
                contract for contract in state.current if not verify_signatures(contract, keys_of)
            )
            return
        state.current, state.problems = loaded.contracts, ()
        self.rate_limiter.retain(set(loaded.contracts.ids()))
        log.info("contracts_reloaded", count=len(loaded.contracts))


def _dir_stamp(settings: GatewaySettings) -> tuple[tuple[str, int, int], ...]:
    directory = settings.contracts.dir
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    stamps = []
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat()
            stamps.append((entry.name, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


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
    loaded = load_contract_dir(settings.contracts.dir, registry.current.signing_keys, now)
    for problem in loaded.problems:
        log.warning("contract_refused", problem=str(problem))
    contracts = ContractState(
        current=loaded.contracts,
        problems=tuple(str(problem) for problem in loaded.problems),
        stamp=_dir_stamp(settings),
        registry_serial=registry.current.serial,
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
            runtime.reload()
        except Exception:  # noqa: BLE001 - a reload bug must never take the gateway down
            get_logger(agency=runtime.agency).exception("reload_failed")

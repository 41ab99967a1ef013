"""Prometheus metrics of one gateway instance.

Every gateway instance has its own :class:`GatewayMetrics` and with it its own
``CollectorRegistry``: several gateways in one process (tests, the demo) never
share a value, and nothing is registered in prometheus_client's global
registry. The names, types and labels are a contract: the alert rules and
the dashboard in deploy/ are written against them.

Label values always come from bounded sets: agency ids from the trust
registry, service ids from the configuration or the loaded contracts,
contract ids and purposes from the loaded contracts, problem names from
:func:`~gateway.errors.known_problem_names` (a peer's own name becomes
``upstream-other``) and OAuth error codes on the token endpoint, phases from
:data:`PHASES`. Anything unknown or not yet validated is ``unknown``. No
subject, message id, key, token or URL path ever becomes a label value, so
the number of series does not grow with traffic.

Gauges that depend on the time or on the state in force (contract, key and
registry expiry, contracts by status, checkpoint age, replay-cache size...)
are computed when ``/metrics`` is scraped, so they are right without traffic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway import __version__
from gateway.errors import TokenRequestError, known_problem_names

if TYPE_CHECKING:
    from gateway.contracts import Contract
    from gateway.runtime import Runtime

# Buckets from 1 ms to 10 s: exchanges take milliseconds, backends can take seconds.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Phases take from microseconds (one signature) to seconds (a slow backend or peer).
PHASE_BUCKETS: Final = (0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS)

# Records per group commit; MAX_BATCH in gateway.audit.log is 512.
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

Direction = Literal["inbound", "outbound"]
Phase = Literal["crypto", "backend", "audit", "upstream"]
PHASES: Final[tuple[Phase, ...]] = ("crypto", "backend", "audit", "upstream")
BACKEND_OUTCOMES: Final = ("ok", "backend-error", "backend-timeout")
CONTRACT_STATUSES: Final = ("in_force", "expired", "not_yet_valid", "suspended", "revoked")
KEY_USES: Final = ("sig", "enc")

OK: Final = "ok"
UNKNOWN: Final = "unknown"
UPSTREAM_OTHER: Final = "upstream-other"

# ``gateway serve --workers N`` sets this for its workers (prometheus_client's multiprocess
# mode): every worker's /metrics then answers the sum over all workers. Read once, as
# prometheus_client itself reads it when it is imported.
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS_DIR: Final = os.environ.get(MULTIPROCESS_ENV)

_PROBLEMS: Final = known_problem_names()
_TOKEN_ERRORS: Final = frozenset(TokenRequestError.STATUSES)


def problem_label(problem: str) -> str:
    """``problem`` when this gateway knows the name, else ``upstream-other`` (a peer's text)."""
    return problem if problem in _PROBLEMS else UPSTREAM_OTHER


_Metric = TypeVar("_Metric", Counter, Histogram)


class _Children(Generic[_Metric]):
    """The labelled children of one metric, each looked up in prometheus_client once.

    ``metric.labels(...)`` checks its arguments and takes a lock on every call,
    and each exchange is counted in several families. Label values here are
    bounded (they come from the registry, the config and the contracts, else
    ``unknown``), so so is this map. Values are given in the metric's label order.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Metric) -> None:
        self._metric: _Metric = metric
        self._children: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *values: str) -> _Metric:
        """The child of these label values."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _PhaseTimer:
    """``with phases.timed("crypto"):`` adds the block's time to that phase."""

    __slots__ = ("_phase", "_phases", "_started")

    def __init__(self, phases: Phases, phase: Phase) -> None:
        self._phases = phases
        self._phase: Phase = phase
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._phases.add(self._phase, self._started)


class Phases:
    """Seconds one exchange spent in each phase; a failed step's time counts too."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: dict[Phase, float] = {}

    def add(self, phase: Phase, since: float) -> float:
        """Add the time since ``since`` (a ``perf_counter`` reading) to ``phase``; it."""
        spent = time.perf_counter() - since
        self.seconds[phase] = self.seconds.get(phase, 0.0) + spent
        return spent

    def timed(self, phase: Phase) -> _PhaseTimer:
        """A context manager timing its block as ``phase``."""
        return _PhaseTimer(self, phase)


class GatewayMetrics:
    """The Prometheus metrics of one gateway instance, in its own registry.

    Built with the agency id; :meth:`bind` attaches the running gateway so
    that labels are checked against the registry, configuration and
    contracts in force and the state gauges are computed at scrape time. It
    also observes the audit log (:class:`~gateway.audit.log.AuditObserver`).
    """

    def __init__(self, agency: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.agency = agency
        self._runtime: Runtime | None = None
        registry = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by endpoint and outcome (ok or the problem name).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.reload_failures = Counter(
            "gateway_reload_failures_total",
            "Registry or contract reloads refused; the last good version stays in force.",
            ["source"],
            registry=registry,
        )
        build = Gauge(
            "gateway_build_info",
            "Build information; the value is always 1.",
            ["version", "agency"],
            registry=registry,
            multiprocess_mode="max",
        )
        build.labels(version=__version__, agency=agency).set(1)
        # -- exchanges -----------------------------------------------------
        self.exchanges = Counter(
            "gateway_exchanges_total",
            "Exchanges by direction (inbound: we are the provider; outbound: the consumer), "
            "peer agency, service, contract, purpose and outcome (ok or the problem name).",
            ["direction", "peer", "service", "contract", "purpose", "outcome"],
            registry=registry,
        )
        self.refusals = Counter(
            "gateway_refusals_total",
            "Refused exchanges and token requests, by problem name (OAuth error on /v1/token).",
            ["direction", "problem"],
            registry=registry,
        )
        self.exchange_duration = Histogram(
            "gateway_exchange_duration_seconds",
            "Whole exchange time at this gateway, whatever the outcome.",
            ["direction", "service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.phase_duration = Histogram(
            "gateway_exchange_phase_seconds",
            "Time one exchange spent in a phase: crypto (JOSE sign, verify, encrypt, decrypt), "
            "backend, audit, upstream (calls to the provider gateway).",
            ["direction", "phase"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        self.backend_duration = Histogram(
            "gateway_backend_duration_seconds",
            "Provider backend call time, by service and outcome.",
            ["service", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens_issued = Counter(
            "gateway_tokens_issued_total",
            "Access tokens granted to consumers (provider side).",
            ["consumer", "contract", "purpose"],
            registry=registry,
        )
        self.token_cache = Counter(
            "gateway_token_cache_total",
            "Consumer-side access token cache lookups, by result (hit or miss).",
            ["result"],
            registry=registry,
        )
        self.verified_token_cache = Counter(
            "gateway_verified_token_cache_total",
            "Provider-side lookups of presented access tokens among those already verified.",
            ["result"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total",
            "Inbound exchanges refused by the contract's rate limit.",
            ["contract"],
            registry=registry,
        )
        # -- audit log -----------------------------------------------------
        self.audit_appends = Counter(
            "gateway_audit_appends_total",
            "Audit records committed.",
            registry=registry,
        )
        self.audit_batch_size = Histogram(
            "gateway_audit_batch_size",
            "Records committed per group commit.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.audit_append_duration = Histogram(
            "gateway_audit_append_duration_seconds",
            "Time from an audit append to its record being durable.",
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        self.audit_store_errors = Counter(
            "gateway_audit_store_errors_total",
            "Failed audit commits and failed background store work (checkpoints, retention).",
            registry=registry,
        )
        # The families every exchange or request touches, by label values.
        self._requests = _Children(self.requests)
        self._latency = _Children(self.latency)
        self._exchanges = _Children(self.exchanges)
        self._refusals = _Children(self.refusals)
        self._exchange_duration = _Children(self.exchange_duration)
        self._phase_duration = _Children(self.phase_duration)
        self._backend_duration = _Children(self.backend_duration)
        self._token_cache = _Children(self.token_cache)
        self._verified_token_cache = _Children(self.verified_token_cache)
        # Series that alerts compute rates of exist from the start, at 0.
        for result in ("hit", "miss"):
            self.token_cache.labels(result=result)
            self.verified_token_cache.labels(result=result)
        for source in ("registry", "contracts"):
            self.reload_failures.labels(source=source)

    # -- wiring ----------------------------------------------------------------

    def bind(self, runtime: Runtime) -> None:
        """Attach the running gateway: label checks, state gauges, audit observation."""
        if self._runtime is not None:
            raise RuntimeError("these metrics are already bound to a gateway")
        self._runtime = runtime
        self.registry.register(_StateCollector(runtime))
        runtime.audit.observer = self

    def render(self) -> bytes:
        """The Prometheus text exposition of this instance's metrics.

        In a worker of ``gateway serve --workers N``: the counters, histograms
        and in-flight gauge summed over every worker (live or gone), and the
        state gauges of this worker's runtime (the same state in every worker).
        """
        if MULTIPROCESS_DIR is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        registry = CollectorRegistry()
        MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
        if self._runtime is not None:
            registry.register(_StateCollector(self._runtime))
        return generate_latest(registry)

    # -- HTTP ------------------------------------------------------------------

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        self._requests(endpoint, outcome).inc()
        self._latency(endpoint).observe(seconds)

    # -- exchanges -------------------------------------------------------------

    def exchange(
        self,
        direction: Direction,
        outcome: str,
        *,
        seconds: float,
        phases: Phases,
        peer: str | None = None,
        service: str | None = None,
        contract: str | None = None,
        purpose: str | None = None,
    ) -> None:
        """Count one finished exchange (``outcome`` "ok" or a problem name) and its times."""
        bound = self._contract(contract)
        service_label = self._service(service)
        outcome_label = OK if outcome == OK else problem_label(outcome)
        self._exchanges(
            direction,
            self._agency(peer),
            service_label,
            bound.id if bound else UNKNOWN,
            _purpose(bound, purpose),
            outcome_label,
        ).inc()
        if outcome != OK:
            self._refusals(direction, outcome_label).inc()
        self._exchange_duration(direction, service_label).observe(seconds)
        for phase, spent in phases.seconds.items():
            self._phase_duration(direction, phase).observe(spent)

    def token_request(
        self,
        outcome: str,
        *,
        consumer: str | None = None,
        contract: str | None = None,
        purpose: str | None = None,
    ) -> None:
        """Count one answered token request: a grant, or a refusal by its OAuth error."""
        if outcome != OK:
            problem = outcome if outcome in _TOKEN_ERRORS else problem_label(outcome)
            self._refusals("inbound", problem).inc()
            return
        bound = self._contract(contract)
        self.tokens_issued.labels(
            consumer=self._agency(consumer),
            contract=bound.id if bound else UNKNOWN,
            purpose=_purpose(bound, purpose),
        ).inc()

    def backend_call(self, service: str, outcome: str, seconds: float) -> None:
        """Time one backend call (outcome ok, backend-error or backend-timeout)."""
        label = outcome if outcome in BACKEND_OUTCOMES else "backend-error"
        self._backend_duration(self._service(service), label).observe(seconds)

    def token_cache_lookup(self, *, hit: bool) -> None:
        """Count one consumer-side token cache lookup."""
        self._token_cache("hit" if hit else "miss").inc()

    def verified_token_lookup(self, *, hit: bool) -> None:
        """Count one provider-side lookup in the cache of verified access tokens."""
        self._verified_token_cache("hit" if hit else "miss").inc()

    def rate_limit(self, contract: str) -> None:
        """Count one exchange refused by ``contract``'s rate limit."""
        bound = self._contract(contract)
        self.rate_limited.labels(contract=bound.id if bound else UNKNOWN).inc()

    # -- audit observer --------------------------------------------------------

    def audit_committed(self, waits: Sequence[float]) -> None:
        """One group commit of ``len(waits)`` records, each waited ``waits[i]`` seconds."""
        self.audit_appends.inc(len(waits))
        self.audit_batch_size.observe(len(waits))
        for wait in waits:
            self.audit_append_duration.observe(wait)

    def audit_store_error(self) -> None:
        """A failed commit or failed background store work."""
        self.audit_store_errors.inc()

    # -- bounded labels --------------------------------------------------------

    def _agency(self, agency: str | None) -> str:
        runtime = self._runtime
        if agency is None or runtime is None or runtime.trusted().agency(agency) is None:
            return UNKNOWN
        return agency

    def _service(self, service: str | None) -> str:
        runtime = self._runtime
        if service is None or runtime is None:
            return UNKNOWN
        if service in runtime.settings.services:
            return service
        if runtime.contracts.current.has_service(service):
            return service
        return UNKNOWN

    def _contract(self, contract: str | None) -> Contract | None:
        runtime = self._runtime
        if contract is None or runtime is None:
            return None
        return runtime.contract(contract)


def _purpose(contract: Contract | None, purpose: str | None) -> str:
    if contract is None or purpose is None or not contract.allows_purpose(purpose):
        return UNKNOWN
    return purpose


def contract_status(contract: Contract, now: float) -> str:
    """One of :data:`CONTRACT_STATUSES` for ``contract`` at ``now``."""
    if contract.status != "active":
        return contract.status
    if int(now) < int(contract.valid_from.timestamp()):
        return "not_yet_valid"
    if int(now) > int(contract.valid_until.timestamp()):
        return "expired"
    return "in_force"


class _StateCollector:
    """The gauges computed from the gateway's state at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (so registering reads no state)."""
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        """The families with their current values."""
        runtime = self._runtime
        now = runtime.clock()
        (
            replay,
            loaded,
            contract_expiry,
            registry_expiry,
            key_expiry,
            serial,
            last_reload,
            tree_size,
            last_checkpoint,
            checkpoint_age,
            store_up,
        ) = self._families()
        replay.add_metric([], len(runtime.replay))
        by_status = dict.fromkeys(CONTRACT_STATUSES, 0)
        for contract in runtime.contracts.current:
            by_status[contract_status(contract, now)] += 1
            contract_expiry.add_metric([contract.id], contract.valid_until.timestamp() - now)
        for status, count in by_status.items():
            loaded.add_metric([status], count)
        registry = runtime.trusted()
        registry_expiry.add_metric([], registry.exp - now)
        for use, listed in _own_keys_listed(runtime):
            key_expiry.add_metric([use], registry.exp - now if listed else -1)
        serial.add_metric([], registry.serial)
        if runtime.registry.last_success is not None:
            last_reload.add_metric([], runtime.registry.last_success)
        audit = runtime.audit
        tree_size.add_metric([], audit.tree_size)
        checkpointed = audit.last_checkpoint_time
        if checkpointed is not None:
            last_checkpoint.add_metric([], checkpointed)
        since = checkpointed if checkpointed is not None else audit.opened_at
        if since is not None:
            checkpoint_age.add_metric([], max(0.0, now - since))
        store_up.add_metric([], 1 if audit.healthy() else 0)
        return (
            replay,
            loaded,
            contract_expiry,
            registry_expiry,
            key_expiry,
            serial,
            last_reload,
            tree_size,
            last_checkpoint,
            checkpoint_age,
            store_up,
        )

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=list(labels))

        return (
            gauge("gateway_replay_cache_entries", "Message ids remembered by the replay cache."),
            gauge(
                "gateway_contracts_loaded",
                "Loaded contracts by status: in_force, expired, not_yet_valid, suspended, revoked.",
                ["status"],
            ),
            gauge(
                "gateway_contract_expiry_seconds",
                "Seconds until the contract's valid_until (negative once past).",
                ["contract"],
            ),
            gauge(
                "gateway_registry_expiry_seconds",
                "Seconds until the trust registry in force expires (negative once past).",
            ),
            gauge(
                "gateway_key_expiry_seconds",
                "Seconds until our own key of this use stops being trusted: the registry's "
                "expiry while the registry lists the key, -1 when it does not.",
                ["use"],
            ),
            gauge("gateway_registry_serial", "Serial of the trust registry in force."),
            gauge(
                "gateway_registry_last_reload_timestamp_seconds",
                "Unix time of the last successful registry load.",
            ),
            gauge("gateway_audit_tree_size", "Records in the audit log (size of the tree)."),
            gauge(
                "gateway_audit_last_checkpoint_timestamp_seconds",
                "Unix time the audit log's latest signed checkpoint was last known to cover "
                "the whole tree (a checkpoint was signed, or the tree had not grown).",
            ),
            gauge(
                "gateway_audit_checkpoint_age_seconds",
                "Seconds since the last checkpoint covered the whole tree (since start if "
                "none yet).",
            ),
            gauge(
                "gateway_audit_store_up",
                "1 when the last audit store write succeeded, else 0.",
            ),
        )


def _own_keys_listed(runtime: Runtime) -> Iterator[tuple[str, bool]]:
    """Whether the registry in force lists our active signing and encryption keys."""
    registry = runtime.trusted()
    agency = runtime.agency
    yield "sig", registry.signing_key(agency, runtime.keys.signing.kid) is not None
    entry = registry.agency(agency)
    kid = runtime.keys.encryption.kid
    yield (
        "enc",
        entry is not None
        and registry.is_active(agency)
        and any(key.use == "enc" and key.kid == kid for key in entry.keys),
    )


__all__ = [
    "LATENCY_BUCKETS",
    "PHASES",
    "GatewayMetrics",
    "Phases",
    "contract_status",
    "problem_label",
]

"""The aiohttp application: routes, admission control and error rendering.

Handlers are thin: they read the request, call the provider or consumer
pipeline, and write the answer. Every refusal is rendered by
:mod:`gateway.web.problems`; an unexpected exception becomes a generic 500
and a log event, never a traceback on the wire.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web

from gateway.backend import HttpBackend
from gateway.bodies import HandedBody, pieces_to_write, read_bounded
from gateway.errors import (
    AuditUnavailable,
    Overloaded,
    PayloadTooLarge,
    ProblemError,
    TokenRequestError,
    known_problem_names,
)
from gateway.inbound import ExchangeContext, Provider
from gateway.keys import jwks_document
from gateway.observability import get_logger
from gateway.outbound import ClientRequest, Consumer, ExchangeResult, HttpPeerTransport
from gateway.runtime import Runtime
from gateway.tracing import HEADER as TRACEPARENT
from gateway.tracing import active, continue_or_start
from gateway.web.officer import add_officer_routes
from gateway.web.problems import (
    http_problem_response,
    internal_error_response,
    problem_response,
    token_error_response,
)

RUNTIME: Final = web.AppKey("runtime", Runtime)
PROVIDER: Final = web.AppKey("provider", Provider)
CONSUMER: Final = web.AppKey("consumer", Consumer)
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths whose answers are never delayed by admission control: probes must answer under load.
_UNMETERED: Final = frozenset({"/healthz", "/readyz", "/metrics"})

_KNOWN_PROBLEMS: Final = known_problem_names()

# A token request is a few kilobytes of form; more is abuse.
MAX_TOKEN_REQUEST_BYTES: Final = 64 * 1024


def _endpoint(request: web.Request) -> str:
    """A bounded label for the route that matched (never the raw path)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def trace(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request a span: the caller's trace (valid ``traceparent``) or a new one.

    The trace and span ids are on every log line of the request, outgoing
    calls carry a child span, and the answer carries ``traceparent`` of ours.
    """
    span = continue_or_start(request.headers.getall(TRACEPARENT, []))
    with active(span):
        response = await handler(request)
    if not response.prepared:
        response.headers[TRACEPARENT] = span.traceparent()
    return response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admission control, metrics, and rendering of every refusal and bug."""
    runtime = request.app[RUNTIME]
    metrics = runtime.metrics
    endpoint = _endpoint(request)
    started = time.perf_counter()
    metered = request.path not in _UNMETERED
    if metered and runtime.in_flight >= runtime.settings.limits.max_in_flight:
        response: web.StreamResponse = problem_response(
            Overloaded("the gateway is at capacity; retry shortly", retry_after=1)
        )
        metrics.observe(endpoint, "overloaded", time.perf_counter() - started)
        return response
    outcome = "ok"
    if metered:
        runtime.in_flight += 1
        metrics.in_flight.inc()
    try:
        response = await handler(request)
    except ProblemError as exc:
        # A peer's problem name is its own text: only known names become label values.
        outcome = exc.problem if exc.problem in _KNOWN_PROBLEMS else "upstream-other"
        response = problem_response(exc)
    except TokenRequestError as exc:
        outcome, response = exc.error, token_error_response(exc)
    except web.HTTPException as exc:
        response = http_problem_response(exc)
        outcome = "ok" if exc.status < 400 else str(exc.status)
    except Exception:  # noqa: BLE001 - the last line of defence: log it, leak nothing
        get_logger(agency=runtime.agency).exception("unhandled_error", endpoint=endpoint)
        outcome, response = "internal-error", internal_error_response()
    finally:
        if metered:
            runtime.in_flight -= 1
            metrics.in_flight.dec()
    metrics.observe(endpoint, outcome, time.perf_counter() - started)
    return response


# Statuses whose responses carry no body (RFC 9110 6.4.1).
_BODYLESS_STATUSES: Final = frozenset({204, 304})


class ReleasingResponse(web.Response):
    """A response that writes a large body from views of it, then lets it go.

    aiohttp would copy the whole body to join it with the headers (see
    :func:`~gateway.bodies.pieces_to_write`), and it keeps a keep-alive
    connection's last response until the connection's next request: a large
    body (a sealed message, a released record) would be held twice, then
    stay resident through the next exchange (memory).
    """

    async def write_eof(self, data: bytes = b"") -> None:
        """Write the body in pieces and drop it, then end the response."""
        body = self.body
        if isinstance(body, bytes | bytearray) and self.status not in _BODYLESS_STATUSES:
            self.body = None
            for piece in pieces_to_write(body):
                await self.write(piece)
            del body
        await super().write_eof(data)
        self.body = None


async def _read_limited(request: web.Request, limit: int) -> bytearray:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    body = await read_bounded(request.content, limit)
    if body is None:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    return body


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/token`` (protocol 3.1); the provider audits every refusal."""
    runtime = request.app[RUNTIME]
    started = time.perf_counter()
    members: dict[str, Any] = {}
    try:
        raw = await read_bounded(request.content, MAX_TOKEN_REQUEST_BYTES)
        answer, index = await request.app[PROVIDER].token(request.content_type, raw, members)
    except BaseException as exc:
        _log_token(runtime, started, members, error=exc)
        raise
    _log_token(runtime, started, members, audit_index=index)
    return web.json_response(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def service_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/services/{service}`` (protocol 3.3, 3.4)."""
    provider = request.app[PROVIDER]
    runtime = request.app[RUNTIME]
    context = ExchangeContext(started=time.perf_counter())
    service = request.match_info["service"]
    try:
        try:
            provider.check_service(service, context)
            body = HandedBody(await _read_limited(request, runtime.settings.limits.max_body_bytes))
            sealed, index = await provider.exchange(
                service,
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                body,
                context,
            )
        except AuditUnavailable:
            raise
        except ProblemError as exc:
            await provider.refuse(exc, context)
            raise
    except BaseException as exc:
        _log_inbound(runtime, context, error=exc)
        raise
    _log_inbound(runtime, context, audit_index=index)
    return ReleasingResponse(
        body=sealed,
        content_type="application/jose",
        headers={"Cache-Control": "no-store"},
    )


async def exchange_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/exchange/{provider}/{service}`` (protocol 5)."""
    consumer = request.app[CONSUMER]
    runtime = request.app[RUNTIME]
    started = time.perf_counter()
    scheme, _, api_key = request.headers.get("Authorization", "").partition(" ")
    # The audit record's members as they become known; the log takes the non-personal ones.
    members: dict[str, Any] = {
        "consumer": runtime.agency,
        "provider": request.match_info["provider"],
        "service": request.match_info["service"],
    }
    try:
        try:
            body = HandedBody(await _read_limited(request, runtime.settings.limits.max_body_bytes))
        except PayloadTooLarge as exc:
            await consumer.refuse(exc, members)
            raise
        call = ClientRequest(
            api_key=api_key.strip() if scheme.lower() == "bearer" else None,
            provider=request.match_info["provider"],
            service=request.match_info["service"],
            purpose=request.headers.get("X-Purpose"),
            contract=request.headers.get("X-Contract"),
            end_user=request.headers.get("X-End-User"),
            body=body,
        )
        result = await consumer.exchange(call, members)
    except BaseException as exc:
        _log_outbound(runtime, started, members, error=exc)
        raise
    _log_outbound(runtime, started, members, result=result)
    headers = {
        "X-Exchange-Id": result.exchange_id,
        "X-Contract": result.contract,
        "X-Audit-Index": str(result.audit_index),
        "Cache-Control": "no-store",
    }
    if result.provider_audit_index is not None:
        headers["X-Provider-Audit-Index"] = str(result.provider_audit_index)
    # The backend's status (a 404 "no such record" is an answer) reaches the client as is.
    return ReleasingResponse(
        body=result.body.encoded,
        status=result.status,
        headers=headers,
        content_type="application/json",
    )


# -- the one log event per exchange and per token request -------------------------
#
# Each names the exchange (its message ``jti``, shared by both gateways and
# the ``X-Exchange-Id`` header), the trace (``trace_id``, bound by ``trace``),
# the audit record, the parties, contract and purpose, and the outcome. Never a
# subject, an end user, a body, a token or an API key: those fields are picked
# by name, never copied wholesale from a record.


def _outcome(error: BaseException | None) -> tuple[str, int | None]:
    """The outcome name and HTTP status of a refusal or failure."""
    if isinstance(error, ProblemError):
        # A peer's problem name is its own text: only known names are repeated.
        return (error.problem if error.problem in _KNOWN_PROBLEMS else "upstream-other"), (
            error.status
        )
    if isinstance(error, TokenRequestError):
        return error.error, error.status
    if isinstance(error, asyncio.CancelledError):
        return "cancelled", None
    return "internal-error", 500


def _log_event(
    runtime: Runtime,
    event: str,
    started: float,
    fields: Mapping[str, Any],
    *,
    error: BaseException | None,
    status: int | None,
    audit_index: int | None,
) -> None:
    """Write ``event``: ``fields``, then the outcome (``ok``, or what ``error`` says)."""
    outcome = "ok"
    if error is not None:
        outcome, status = _outcome(error)
        audit_index = getattr(error, "audit_id", None)
    log = get_logger(agency=runtime.agency)
    # Failures on our side (5xx, a dropped request) are worth a look; refusals are routine.
    emit = log.info if status is not None and status < 500 else log.warning
    emit(
        event,
        **fields,
        outcome=outcome,
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        audit_index=audit_index,
    )


def _log_inbound(
    runtime: Runtime,
    context: ExchangeContext,
    *,
    error: BaseException | None = None,
    audit_index: int | None = None,
) -> None:
    """The provider side's ``exchange`` event."""
    token, message = context.token, context.request
    fields = {
        "direction": "inbound",
        "peer": token.consumer if token else None,
        "service": context.service,
        "contract": token.grant.contract if token else None,
        "purpose": token.grant.purpose if token else None,
        "client": message.claims.get("client") if message else None,
        "exchange_id": message.jti if message else None,
    }
    _log_event(
        runtime,
        "exchange",
        context.started,
        fields,
        error=error,
        status=context.status if context.status is not None else 200,
        audit_index=audit_index,
    )


def _log_outbound(
    runtime: Runtime,
    started: float,
    members: Mapping[str, Any],
    *,
    error: BaseException | None = None,
    result: ExchangeResult | None = None,
) -> None:
    """The consumer side's ``exchange`` event."""
    fields = {
        "direction": "outbound",
        "peer": members.get("provider"),
        "service": members.get("service"),
        "contract": result.contract if result else members.get("contract"),
        "purpose": members.get("purpose"),
        "client": members.get("client"),
        "exchange_id": result.exchange_id if result else members.get("jti"),
    }
    _log_event(
        runtime,
        "exchange",
        started,
        fields,
        error=error,
        status=result.status if result else None,
        audit_index=result.audit_index if result else None,
    )


def _log_token(
    runtime: Runtime,
    started: float,
    members: Mapping[str, Any],
    *,
    error: BaseException | None = None,
    audit_index: int | None = None,
) -> None:
    """The provider side's ``token`` event (a grant or a refusal)."""
    fields = {
        "direction": "inbound",
        "peer": members.get("consumer"),
        "service": members.get("service"),
        "contract": members.get("contract"),
        "purpose": members.get("purpose"),
    }
    _log_event(runtime, "token", started, fields, error=error, status=200, audit_index=audit_index)


async def jwks(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks.json``: our public keys in preference order."""
    keys = request.app[RUNTIME].keys.public_keys()
    return web.json_response(jwks_document(keys), headers={"Cache-Control": "max-age=60"})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 503 while registry, keys or audit store cannot serve an exchange."""
    body, ready = readiness(request.app[RUNTIME])
    return web.json_response(body, status=200 if ready else 503)


# Components whose problems make the gateway not ready. Contract problems are
# reported but never fail readiness: a refused file leaves the last good set in
# force (ADR 0003), and an agency with no contract in force yet still serves
# its JWKS, token refusals and officer API; the contract expiry metrics alert.
_BLOCKING: Final = frozenset({"registry", "keys", "audit"})


def readiness(runtime: Runtime) -> tuple[dict[str, Any], bool]:
    """The ``/readyz`` body (``problems`` by component, one sentence each) and the verdict."""
    now = runtime.now()
    registry = runtime.trusted()
    found: dict[str, list[str]] = {}

    def report(component: str, problem: str) -> None:
        found.setdefault(component, []).append(problem)

    if runtime.registry.expires_in(now) <= 0:
        report("registry", "the trust registry has expired")
    entry = registry.agency(runtime.agency)
    if not registry.is_active(runtime.agency):
        report("registry", "this agency is not active in the trust registry")
    else:
        listed = {key.kid for key in entry.keys} if entry is not None else set()
        if runtime.keys.signing.kid not in listed:
            report("keys", "our signing key is not listed in the trust registry")
        if runtime.keys.encryption.kid not in listed:
            report("keys", "our encryption key is not listed in the trust registry")
        preferred = registry.encryption_key(runtime.agency)
        held = {key.kid for key in runtime.keys.decryption}
        if preferred is None or preferred.kid not in held:
            report("keys", "peers encrypt to a key this gateway does not hold")
    if not runtime.audit.healthy():
        report("audit", "the audit store cannot be written")
    contracts = runtime.contracts
    if contracts.problems:
        report("contracts", f"{len(contracts.problems)} contract files refused")
    if not any(contract.in_force(now) for contract in contracts.current):
        report("contracts", "no contract is in force")
    ready = not _BLOCKING & set(found)
    problems = {component: "; ".join(texts) for component, texts in found.items()}
    return {"status": "ready" if ready else "not-ready", "problems": problems}, ready


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text exposition."""
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def outbound_session() -> aiohttp.ClientSession:
    """The one client session of a gateway, to its peers and its backends.

    It keeps no cookies: an exchange carries no state from one to the next,
    and a peer's or backend's ``Set-Cookie`` would otherwise be stored and
    sent back to that host, on any port (deny by default).
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), json_serialize=json.dumps
    )


def create_app(runtime: Runtime) -> web.Application:
    """The gateway's application; the shared client session lives with it."""
    app = web.Application(
        middlewares=[trace, guard], client_max_size=runtime.settings.limits.max_body_bytes
    )
    app[RUNTIME] = runtime

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        session = outbound_session()
        app[SESSION] = session
        app[PROVIDER] = Provider(runtime, HttpBackend(session))
        app[CONSUMER] = Consumer(
            runtime, HttpPeerTransport(session, runtime.settings.limits.upstream_timeout_seconds)
        )
        yield
        await app[CONSUMER].close()
        await session.close()

    app.cleanup_ctx.append(session_context)
    app.router.add_post("/v1/token", token_endpoint)
    app.router.add_post("/v1/services/{service}", service_endpoint)
    app.router.add_post("/v1/exchange/{provider}/{service}", exchange_endpoint)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_officer_routes(app, runtime)
    return app

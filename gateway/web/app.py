"""The aiohttp application: routes, admission control and error rendering.

Handlers are thin: they read the request, call the provider or consumer
pipeline, and write the answer. Every refusal is rendered by
:mod:`gateway.web.problems`; an unexpected exception becomes a generic 500
and a log event, never a traceback on the wire.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web

from gateway.backend import HttpBackend
from gateway.bodies import read_bounded
from gateway.errors import (
    AuditUnavailable,
    Overloaded,
    PayloadTooLarge,
    ProblemError,
    TokenRequestError,
    known_problem_names,
)
from gateway.inbound import ExchangeContext, Provider, audit_refusal
from gateway.keys import jwks_document
from gateway.observability import get_logger
from gateway.outbound import ClientRequest, Consumer, HttpPeerTransport
from gateway.runtime import Runtime
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


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    body = await read_bounded(request.content, limit)
    if body is None:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    return body


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/token`` (protocol 3.1); the provider audits every refusal."""
    raw = await read_bounded(request.content, MAX_TOKEN_REQUEST_BYTES)
    answer = await request.app[PROVIDER].token(request.content_type, raw)
    return web.json_response(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def service_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/services/{service}`` (protocol 3.3, 3.4)."""
    provider = request.app[PROVIDER]
    runtime = request.app[RUNTIME]
    context = ExchangeContext(started=time.perf_counter())
    service = request.match_info["service"]
    try:
        provider.check_service(service, context)
        raw = await _read_limited(request, runtime.settings.limits.max_body_bytes)
        try:
            jwe = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            jwe = ""
        sealed, index = await provider.exchange(
            service,
            request.headers.get("Authorization"),
            request.headers.get("Content-Type"),
            jwe,
            context,
        )
    except AuditUnavailable:
        raise
    except ProblemError as exc:
        await provider.refuse(exc, context)
        _log_exchange(runtime, "inbound", context.service, exc.problem, exc.status)
        raise
    _log_exchange(runtime, "inbound", service, "ok", 200, audit_index=index)
    return web.Response(
        body=sealed.encode("ascii"),
        content_type="application/jose",
        headers={"Cache-Control": "no-store"},
    )


async def exchange_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/exchange/{provider}/{service}`` (protocol 5)."""
    consumer = request.app[CONSUMER]
    runtime = request.app[RUNTIME]
    scheme, _, api_key = request.headers.get("Authorization", "").partition(" ")
    try:
        raw = await _read_limited(request, runtime.settings.limits.max_body_bytes)
    except PayloadTooLarge as exc:
        members = {
            "consumer": runtime.agency,
            "provider": request.match_info["provider"],
            "service": request.match_info["service"],
        }
        await audit_refusal(runtime, exc, "outbound", members)
        raise
    call = ClientRequest(
        api_key=api_key.strip() if scheme.lower() == "bearer" else None,
        provider=request.match_info["provider"],
        service=request.match_info["service"],
        purpose=request.headers.get("X-Purpose"),
        contract=request.headers.get("X-Contract"),
        end_user=request.headers.get("X-End-User"),
        body=raw,
    )
    try:
        result = await consumer.exchange(call)
    except ProblemError as exc:
        _log_exchange(runtime, "outbound", call.service, exc.problem, exc.status)
        raise
    _log_exchange(runtime, "outbound", call.service, "ok", 200, audit_index=result.audit_index)
    headers = {
        "X-Exchange-Id": result.exchange_id,
        "X-Contract": result.contract,
        "X-Audit-Index": str(result.audit_index),
        "Cache-Control": "no-store",
    }
    if result.provider_audit_index is not None:
        headers["X-Provider-Audit-Index"] = str(result.provider_audit_index)
    # The backend's status (a 404 "no such record" is an answer) reaches the client as is.
    return web.json_response(result.body, status=result.status, headers=headers)


def _log_exchange(
    runtime: Runtime,
    direction: str,
    service: str | None,
    outcome: str,
    status: int,
    *,
    audit_index: int | None = None,
) -> None:
    get_logger(agency=runtime.agency).info(
        "exchange",
        direction=direction,
        service=service,
        outcome=outcome,
        status=status,
        audit_index=audit_index,
    )


async def jwks(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks.json``: our public keys in preference order."""
    keys = request.app[RUNTIME].keys.public_keys()
    return web.json_response(jwks_document(keys), headers={"Cache-Control": "max-age=60"})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: registry, keys, contracts and audit store usable."""
    runtime = request.app[RUNTIME]
    now = runtime.now()
    problems = {}
    if runtime.registry.expires_in(now) <= 0:
        problems["registry"] = "the trust registry has expired"
    if not runtime.trusted().is_active(runtime.agency):
        problems["keys"] = "this agency is not active in the trust registry"
    elif runtime.trusted().signing_key(runtime.agency, runtime.keys.signing.kid) is None:
        problems["keys"] = "our signing key is not listed in the trust registry"
    if not runtime.audit.healthy():
        problems["audit"] = "the audit store cannot be written"
    if runtime.contracts.problems:
        problems["contracts"] = f"{len(runtime.contracts.problems)} contract files refused"
    status = 503 if set(problems) - {"contracts"} else 200
    body = {"status": "ready" if status == 200 else "not-ready", "problems": problems}
    return web.json_response(body, status=status)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text exposition."""
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def create_app(runtime: Runtime) -> web.Application:
    """The gateway's application; the shared client session lives with it."""
    app = web.Application(
        middlewares=[guard], client_max_size=runtime.settings.limits.max_body_bytes
    )
    app[RUNTIME] = runtime

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, json_serialize=json.dumps)
        app[SESSION] = session
        app[PROVIDER] = Provider(runtime, HttpBackend(session))
        app[CONSUMER] = Consumer(
            runtime, HttpPeerTransport(session, runtime.settings.limits.upstream_timeout_seconds)
        )
        yield
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

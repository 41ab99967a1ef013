"""The privacy officers' API (protocol section 6): records, checkpoints, proofs.

Every call needs an officer key (``Authorization: Bearer ...``); a missing or
unknown key gets 401, a client's key 403. Every call, answered or refused, is
itself appended to the log before anything is answered, so officers' reading
is as accountable as agencies' exchanges; if that record cannot be written
the officer gets 503 ``audit-unavailable`` and no data.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from gateway.audit.bundle import b64, leaf_document
from gateway.audit.merkle import ProofError
from gateway.audit.query import (
    QUERY_PARAMETERS,
    QueryError,
    RecordQuery,
    is_whole_number,
    parse_query,
)
from gateway.audit.store import StoredLeaf
from gateway.errors import BadRequest, Forbidden, NotFound, ProblemError, Unauthorized
from gateway.inbound import elapsed_us, write_audit
from gateway.runtime import Runtime

OfficerHandler = Callable[[web.Request, Runtime, "OfficerCall"], Awaitable[web.Response]]

# Longest accepted query value: ids, purposes and times are far shorter.
MAX_PARAMETER_LENGTH: Final = 256


class OfficerCall:
    """One officer request: who asked, and the record members describing what was asked."""

    def __init__(self, officer: str | None) -> None:
        self.officer = officer
        self.query: dict[str, str] = {}
        self.subject: str | None = None


def _authenticate(request: web.Request, runtime: Runtime) -> str:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("an officer key is required (Authorization: Bearer ...)")
    officer = runtime.settings.officer_for_key(key.strip())
    if officer is not None:
        return officer
    if runtime.settings.client_for_key(key.strip()) is not None:
        raise Forbidden("this key belongs to a client system, not to a privacy officer")
    raise Unauthorized("the officer key is not known")


def _params(request: web.Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name in params:
            raise BadRequest(f"{name}: given more than once")
        if len(value) > MAX_PARAMETER_LENGTH:
            raise BadRequest(f"{name}: longer than {MAX_PARAMETER_LENGTH} characters")
        params[name] = value
    return params


def officer_endpoint(
    runtime: Runtime, handler: OfficerHandler
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap ``handler``: authenticate, then log the call (answered or refused) before answering."""

    async def endpoint(request: web.Request) -> web.Response:
        started = time.perf_counter()
        call = OfficerCall(None)
        try:
            call.officer = _authenticate(request, runtime)
            response = await handler(request, runtime, call)
        except ProblemError as exc:
            exc.audit_id = await _log_call(
                runtime, request, call, started, status=exc.status, problem=exc.problem
            )
            raise
        except Exception:
            # A bug: the call is still on the record, as the 500 the app answers.
            await _log_call(runtime, request, call, started, status=500, problem="internal-error")
            raise
        await _log_call(runtime, request, call, started, status=200, problem=None)
        response.headers["Cache-Control"] = "no-store"
        return response

    return endpoint


async def _log_call(
    runtime: Runtime,
    request: web.Request,
    call: OfficerCall,
    started: float,
    *,
    status: int,
    problem: str | None,
) -> int:
    resource = request.match_info.route.resource
    members: dict[str, Any] = {
        "kind": "officer-query",
        "direction": "local",
        "officer": call.officer,
        "detail": resource.canonical if resource is not None else "unmatched",
        "query": call.query or None,
        "subject": call.subject,
        "latency_us": elapsed_us(started),
    }
    if problem is None:
        members.update(outcome="ok", status=status)
    else:
        members.update(
            outcome="refused" if status < 500 else "error", status=status, problem=problem
        )
    return await write_audit(runtime, **members)


def _known(params: dict[str, str], names: frozenset[str] | tuple[str, ...]) -> dict[str, str]:
    """The parameters worth recording: unknown ones are refused or ignored, and their
    values (a clear subject id typed into the wrong field) never reach the log."""
    return {name: value for name, value in params.items() if name in names}


def _whole_number(params: dict[str, str], name: str) -> int:
    value = params.get(name)
    if value is None or value == "":
        raise BadRequest(f"{name}: required")
    if not is_whole_number(value):
        raise BadRequest(f"{name}: must be a whole number below 2**63")
    return int(value)


async def audit_key(request: web.Request, runtime: Runtime, call: OfficerCall) -> web.Response:
    """``GET /v1/audit/key``: the log's C2SP verifier key."""
    return web.Response(text=runtime.audit.verifier.verifier_key() + "\n")


async def audit_checkpoint(
    request: web.Request, runtime: Runtime, call: OfficerCall
) -> web.Response:
    """``GET /v1/audit/checkpoint``: the latest signed checkpoint."""
    latest = await runtime.audit.latest_checkpoint()
    return web.Response(text=latest.note)


def _describe(call: OfficerCall, params: dict[str, str], runtime: Runtime) -> None:
    """Put what was asked on the call's record; a clear subject id only as its pseudonym."""
    call.query = _known(params, QUERY_PARAMETERS - {"subject"})
    if params.get("subject"):
        call.subject = runtime.pseudonymize(params["subject"])


async def audit_records(request: web.Request, runtime: Runtime, call: OfficerCall) -> web.Response:
    """``GET /v1/audit/records``: one page of records matching the filters."""
    params = _params(request)
    _describe(call, params, runtime)
    try:
        query = parse_query(params, runtime.pseudonymize.all_pseudonyms)
    except QueryError as exc:
        raise BadRequest(str(exc)) from exc
    page = await runtime.audit.find(query)
    return web.json_response(records_page(query, page))


def records_page(query: RecordQuery, page: list[StoredLeaf]) -> dict[str, Any]:
    """The records answer: the page and the cursor of the next one (None at the end)."""
    more = len(page) == query.limit
    return {
        "records": [leaf_document(stored) for stored in page],
        "next_cursor": query.next_cursor(page[-1].index) if more else None,
    }


async def audit_record(request: web.Request, runtime: Runtime, call: OfficerCall) -> web.Response:
    """``GET /v1/audit/records/{index}``: one record."""
    text = request.match_info["index"]
    # Only a number is recorded: free text in the path might be anything, a subject id too.
    numeric = text.isascii() and text.isdigit() and len(text) <= 19
    call.query = {"index": text} if numeric else {}
    if not numeric:
        raise BadRequest("index: must be a whole number")
    if not is_whole_number(text):  # beyond any store's index type: there is no such record
        raise NotFound("no record has that index")
    try:
        stored = await runtime.audit.read(int(text))
    except KeyError as exc:
        raise NotFound("no record has that index") from exc
    return web.json_response(leaf_document(stored))


async def inclusion_proof(
    request: web.Request, runtime: Runtime, call: OfficerCall
) -> web.Response:
    """``GET /v1/audit/proof/inclusion?index=&tree_size=``."""
    params = _params(request)
    call.query = _known(params, ("index", "tree_size"))
    index, tree_size = _whole_number(params, "index"), _whole_number(params, "tree_size")
    if index >= tree_size:
        raise BadRequest("index: must be smaller than tree_size")
    try:
        hashes = await runtime.audit.inclusion_proof(index, tree_size)
    except ProofError as exc:
        raise BadRequest(f"tree_size: {exc}") from exc
    return web.json_response(
        {"index": index, "tree_size": tree_size, "hashes": [b64(h) for h in hashes]}
    )


async def consistency_proof(
    request: web.Request, runtime: Runtime, call: OfficerCall
) -> web.Response:
    """``GET /v1/audit/proof/consistency?first=&second=``."""
    params = _params(request)
    call.query = _known(params, ("first", "second"))
    first, second = _whole_number(params, "first"), _whole_number(params, "second")
    if not 0 < first <= second:
        raise BadRequest("first: must be at least 1 and at most second")
    try:
        hashes = await runtime.audit.consistency_proof(first, second)
    except ProofError as exc:
        raise BadRequest(f"second: {exc}") from exc
    return web.json_response({"first": first, "second": second, "hashes": [b64(h) for h in hashes]})


def add_officer_routes(app: web.Application, runtime: Runtime) -> None:
    """Mount the officer API on ``app``."""
    routes: dict[str, OfficerHandler] = {
        "/v1/audit/key": audit_key,
        "/v1/audit/checkpoint": audit_checkpoint,
        "/v1/audit/records": audit_records,
        "/v1/audit/records/{index}": audit_record,
        "/v1/audit/proof/inclusion": inclusion_proof,
        "/v1/audit/proof/consistency": consistency_proof,
    }
    for path, handler in routes.items():
        app.router.add_get(path, officer_endpoint(runtime, handler))

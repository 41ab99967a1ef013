"""The one place refusals become HTTP answers (RFC 9457 and RFC 6749 5.2)."""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web

from gateway.errors import PROBLEM_TYPE_PREFIX, ProblemError, TokenRequestError

PROBLEM_JSON: Final = "application/problem+json"

# aiohttp's own refusals (routing, methods, body size) mapped onto problem names.
_HTTP_PROBLEMS: Final = {
    404: ("not-found", "No such resource"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "The request body is too large"),
}


def problem_response(error: ProblemError) -> web.Response:
    """The ``application/problem+json`` answer for ``error``."""
    headers = {"Cache-Control": "no-store"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return web.Response(
        status=error.status,
        body=json.dumps(error.to_problem()).encode("utf-8"),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def http_problem_response(exc: web.HTTPException) -> web.Response:
    """An aiohttp HTTP exception (unknown route, wrong method, ...) as problem+json."""
    name, title = _HTTP_PROBLEMS.get(exc.status, ("bad-request", exc.reason))
    document = {
        "type": PROBLEM_TYPE_PREFIX + name,
        "title": title,
        "status": exc.status,
        "detail": exc.reason,
    }
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
    return web.Response(
        status=exc.status,
        body=json.dumps(document).encode("utf-8"),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def internal_error_response() -> web.Response:
    """The answer to a bug: no detail that could leak anything."""
    document = {
        "type": PROBLEM_TYPE_PREFIX + "internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": "the gateway failed; the incident is logged",
    }
    return web.Response(
        status=500, body=json.dumps(document).encode("utf-8"), content_type=PROBLEM_JSON
    )


def token_error_response(error: TokenRequestError) -> web.Response:
    """The RFC 6749 section 5.2 answer of ``/v1/token``."""
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    return web.json_response(error.to_json(), status=error.status, headers=headers)

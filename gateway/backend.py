"""Calling a provider's backend: one pooled HTTP session, a timeout per service.

The backend receives the consumer's request body as JSON, with the contract
context in headers (and a W3C ``traceparent`` continuing the exchange's
trace), and answers with a JSON object. Statuses below 500 are
answers (a 404 "no such record" is signed like any other); 500 and above,
or anything that is not a JSON object, is ``backend-error``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

from gateway.bodies import HandedBody, read_bounded, request_body
from gateway.errors import BackendError, BackendTimeout, MalformedJose
from gateway.jose import strict_json_object_taken
from gateway.tracing import outgoing_headers

# A backend answer larger than this is refused rather than buffered.
MAX_BACKEND_RESPONSE_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class BackendRequest:
    """What the provider gateway asks its backend, with the non-personal context."""

    url: str
    timeout: float
    # The request body's JSON, taken when sent: serialized before the call so that
    # the parsed body (several times its JSON) is not held through it (memory).
    body: HandedBody[bytes]
    consumer: str
    contract: str
    purpose: str
    exchange_id: str


@dataclass(frozen=True)
class BackendAnswer:
    """A backend's answer: its status and its JSON object."""

    status: int
    body: dict[str, Any]


class Backend(Protocol):
    """The seam between the exchange pipeline and the agency's own systems."""

    async def call(self, request: BackendRequest) -> BackendAnswer:
        """Ask the backend; ``BackendError`` or ``BackendTimeout`` when it fails."""


class HttpBackend:
    """Backends reached over HTTP through one shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def call(self, request: BackendRequest) -> BackendAnswer:
        """POST the body as JSON and read a JSON object back within the timeout."""
        headers = {
            "Content-Type": "application/json",
            "X-Consumer": request.consumer,
            "X-Contract": request.contract,
            "X-Purpose": request.purpose,
            "X-Exchange-Id": request.exchange_id,
            # The agency's backend may join the trace of this exchange.
            **outgoing_headers(),
        }
        body, length = request_body(request.body.take())
        try:
            async with asyncio.timeout(request.timeout):
                async with self._session.post(
                    request.url, data=body, headers={**headers, **length}
                ) as response:
                    # Sent: the request's JSON is not held while the answer is read (memory).
                    del body
                    raw = await read_bounded(
                        response.content,
                        MAX_BACKEND_RESPONSE_BYTES,
                        announced=response.content_length,
                    )
                    status = response.status
        except TimeoutError as exc:
            raise BackendTimeout("the backend did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BackendError(
                "the backend could not be reached", audit_detail=type(exc).__name__
            ) from exc
        if raw is None:
            raise BackendError("the backend answer is too large")
        if status >= 500:
            raise BackendError(f"the backend failed with status {status}")
        answer = HandedBody(raw)
        del raw
        try:
            # Signed objects carry integers only (protocol 3.0): a float cannot be released.
            body = strict_json_object_taken(answer.take)
        except MalformedJose as exc:
            raise BackendError(f"the backend answer is not usable: {exc}") from exc
        return BackendAnswer(status=status, body=body)

"""The gateway's one exception tree.

Every error the gateway raises on purpose derives from :class:`GatewayError`.
Foreign exceptions (cryptography, pydantic, aiohttp) are
translated once, where they happen, with ``raise ... from``::

    GatewayError
    ├── ProblemError            answered as RFC 9457 problem+json (protocol 3.5)
    │   ├── PeerProblem         the caller or peer sent something we refuse (4xx)
    │   │   ├── EnvelopeInvalid       envelope-invalid      400
    │   │   ├── SignatureInvalid      signature-invalid     401
    │   │   ├── TokenInvalid          token-invalid         401
    │   │   ├── BindingMismatch       binding-mismatch      401
    │   │   ├── StaleMessage          stale-message         401
    │   │   ├── Unauthorized          unauthorized          401
    │   │   ├── ContractDenied        contract-denied       403
    │   │   ├── Forbidden             forbidden             403
    │   │   ├── NotFound              not-found             404
    │   │   ├── UnknownService        unknown-service       404
    │   │   ├── Replay                replay                409
    │   │   ├── PayloadTooLarge       payload-too-large     413
    │   │   ├── UnsupportedMediaType  unsupported-media-type 415
    │   │   ├── BadRequest            bad-request           400
    │   │   └── RateLimited           rate-limited          429 (+ Retry-After)
    │   ├── ServiceProblem      our side, or the backend, failed (5xx)
    │   │   ├── BackendError          backend-error         502
    │   │   ├── UpstreamUnreachable   upstream-unreachable  502
    │   │   ├── AuditUnavailable      audit-unavailable     503
    │   │   ├── Overloaded            overloaded            503 (+ Retry-After)
    │   │   └── BackendTimeout        backend-timeout       504
    │   └── UpstreamProblem     a peer gateway's refusal, passed through unchanged
    ├── TokenRequestError       answered as RFC 6749 section 5.2 JSON on /v1/token
    ├── JoseError               a JOSE object was refused; callers map it to the
    │   │                       problem of the position it held
    │   ├── MalformedJose       structure, header, claims or decryption
    │   └── BadSignature        the signature does not verify
    └── SetupError              a local file or setting is unusable (config, keys,
                                registry, contracts); never reaches a peer

The problem names and statuses are the protocol's (section 3.5) and are
rendered in exactly one place, :func:`gateway.web.problems.problem_response`.
Details never contain personal data: callers pass fixed phrases and field
names, never values taken from a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

PROBLEM_TYPE_PREFIX = "urn:gateway:problem:"


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ProblemError(GatewayError):
    """A refusal answered as ``application/problem+json`` (RFC 9457).

    ``detail`` is shown to the caller and must never hold personal data.
    ``audit_detail`` may say more (which check failed inside the crypto) and
    goes only to the audit log and logs, never to the peer (crypto failures
    stay opaque).
    """

    problem: str = "internal-error"
    status: int = 500
    title: str = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        audit_detail: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.audit_detail = audit_detail or detail
        self.retry_after = retry_after
        self.audit_id: int | None = None

    @property
    def type_uri(self) -> str:
        """The problem ``type`` URI, ``urn:gateway:problem:{name}``."""
        return PROBLEM_TYPE_PREFIX + self.problem

    def to_problem(self) -> dict[str, Any]:
        """The RFC 9457 document for this refusal."""
        doc: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.audit_id is not None:
            doc["audit_id"] = self.audit_id
        return doc


class PeerProblem(ProblemError):
    """The caller or the peer gateway sent something the protocol refuses."""


class ServiceProblem(ProblemError):
    """Our side or the backend failed; the caller did nothing wrong."""


class EnvelopeInvalid(PeerProblem):
    problem = "envelope-invalid"
    status = 400
    title = "The message envelope is not valid"


class SignatureInvalid(PeerProblem):
    problem = "signature-invalid"
    status = 401
    title = "The message signature does not verify"


class TokenInvalid(PeerProblem):
    problem = "token-invalid"
    status = 401
    title = "The access token is not valid"


class BindingMismatch(PeerProblem):
    problem = "binding-mismatch"
    status = 401
    title = "The message is not bound to its token, contract or request"


class StaleMessage(PeerProblem):
    problem = "stale-message"
    status = 401
    title = "The message is outside its validity window"


class Unauthorized(PeerProblem):
    problem = "unauthorized"
    status = 401
    title = "No valid credentials"


class ContractDenied(PeerProblem):
    problem = "contract-denied"
    status = 403
    title = "No contract in force allows this exchange"


class Forbidden(PeerProblem):
    problem = "forbidden"
    status = 403
    title = "This caller may not use that contract or purpose"


class NotFound(PeerProblem):
    problem = "not-found"
    status = 404
    title = "No such resource"


class UnknownService(PeerProblem):
    problem = "unknown-service"
    status = 404
    title = "This gateway does not offer that service"


class Replay(PeerProblem):
    problem = "replay"
    status = 409
    title = "This message was already received"


class PayloadTooLarge(PeerProblem):
    problem = "payload-too-large"
    status = 413
    title = "The request body is too large"


class UnsupportedMediaType(PeerProblem):
    problem = "unsupported-media-type"
    status = 415
    title = "The request body has the wrong media type"


class BadRequest(PeerProblem):
    problem = "bad-request"
    status = 400
    title = "The request is malformed"


class RateLimited(PeerProblem):
    problem = "rate-limited"
    status = 429
    title = "The contract's rate limit is exhausted"


class BackendError(ServiceProblem):
    problem = "backend-error"
    status = 502
    title = "The backend failed"


class UpstreamUnreachable(ServiceProblem):
    problem = "upstream-unreachable"
    status = 502
    title = "The peer gateway could not be reached or answered badly"


class AuditUnavailable(ServiceProblem):
    problem = "audit-unavailable"
    status = 503
    title = "The audit log cannot be written; nothing is served unlogged"


class Overloaded(ServiceProblem):
    problem = "overloaded"
    status = 503
    title = "The gateway is at capacity"


class BackendTimeout(ServiceProblem):
    problem = "backend-timeout"
    status = 504
    title = "The backend did not answer in time"


class UpstreamProblem(ProblemError):
    """A refusal by the peer gateway, passed through to our client unchanged."""

    def __init__(self, document: Mapping[str, Any], *, retry_after: int | None = None) -> None:
        detail = str(document.get("detail", ""))
        super().__init__(detail, retry_after=retry_after)
        self.document = dict(document)
        raw_status = document.get("status")
        self.status = (
            raw_status if isinstance(raw_status, int) and 400 <= raw_status <= 599 else 502
        )
        raw_type = str(document.get("type", ""))
        self.problem = raw_type.removeprefix(PROBLEM_TYPE_PREFIX) or "upstream-error"
        self.title = str(document.get("title", "Refused by the provider"))

    def to_problem(self) -> dict[str, Any]:
        """The peer's own document (its ``audit_id`` names the peer's record)."""
        return dict(self.document)


class TokenRequestError(GatewayError):
    """A refusal on ``/v1/token``, rendered as RFC 6749 section 5.2 JSON."""

    STATUSES: ClassVar[Mapping[str, int]] = {
        "invalid_request": 400,
        "unsupported_grant_type": 400,
        "invalid_client": 401,
        "invalid_authorization_details": 400,
    }

    def __init__(self, error: str, description: str, *, audit_detail: str | None = None) -> None:
        if error not in self.STATUSES:
            raise ValueError(f"unknown OAuth error code {error!r}")
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.audit_detail = audit_detail or description
        self.audit_id: int | None = None

    @property
    def status(self) -> int:
        """The HTTP status RFC 6749 and the protocol assign to this error."""
        return self.STATUSES[self.error]

    def to_json(self) -> dict[str, str]:
        """The RFC 6749 section 5.2 body."""
        return {"error": self.error, "error_description": self.description}


class JoseError(GatewayError):
    """A JOSE object was refused. The reason is for logs and audit only."""


class MalformedJose(JoseError):
    """Wrong structure, refused or unexpected header, bad claims, or undecryptable."""


class BadSignature(JoseError):
    """The signature does not verify with the key named."""


class SetupError(GatewayError):
    """A local file or setting cannot be used; the message names it and why."""

    def __init__(self, source: str, reason: str, *, field: str | None = None) -> None:
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.field = field
        self.reason = reason


def known_problem_names() -> frozenset[str]:
    """Every problem name this gateway itself can raise (a bounded metric label set)."""
    names = set()
    pending: list[type[ProblemError]] = [ProblemError]
    while pending:
        cls = pending.pop()
        names.add(cls.problem)
        pending.extend(cls.__subclasses__())
    return frozenset(names)

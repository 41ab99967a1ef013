"""The exception tree: problem names and statuses (protocol 3.5) and OAuth errors (3.1)."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.errors import (
    PROBLEM_TYPE_PREFIX,
    AuditUnavailable,
    BackendError,
    BackendTimeout,
    BadRequest,
    BadSignature,
    BindingMismatch,
    ContractDenied,
    EnvelopeInvalid,
    Forbidden,
    GatewayError,
    JoseError,
    MalformedJose,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PeerProblem,
    ProblemError,
    RateLimited,
    Replay,
    ServiceProblem,
    SetupError,
    SignatureInvalid,
    StaleMessage,
    TokenInvalid,
    TokenRequestError,
    Unauthorized,
    UnknownService,
    UnsupportedMediaType,
    UpstreamProblem,
    UpstreamUnreachable,
)

# Protocol 3.5, plus the project's own agency-side and HTTP-level names.
PROTOCOL_TABLE: list[tuple[type[ProblemError], str, int]] = [
    (EnvelopeInvalid, "envelope-invalid", 400),
    (SignatureInvalid, "signature-invalid", 401),
    (TokenInvalid, "token-invalid", 401),
    (BindingMismatch, "binding-mismatch", 401),
    (StaleMessage, "stale-message", 401),
    (Replay, "replay", 409),
    (ContractDenied, "contract-denied", 403),
    (UnknownService, "unknown-service", 404),
    (PayloadTooLarge, "payload-too-large", 413),
    (RateLimited, "rate-limited", 429),
    (BackendError, "backend-error", 502),
    (UpstreamUnreachable, "upstream-unreachable", 502),
    (AuditUnavailable, "audit-unavailable", 503),
    (Overloaded, "overloaded", 503),
    (BackendTimeout, "backend-timeout", 504),
    (Unauthorized, "unauthorized", 401),
    (Forbidden, "forbidden", 403),
]
PROJECT_TABLE: list[tuple[type[ProblemError], str, int]] = [
    (NotFound, "not-found", 404),
    (UnsupportedMediaType, "unsupported-media-type", 415),
    (BadRequest, "bad-request", 400),
]
ALL_TABLE = PROTOCOL_TABLE + PROJECT_TABLE


def _concrete_problem_classes() -> set[type[ProblemError]]:
    found: set[type[ProblemError]] = set()
    for value in vars(errors).values():
        if (
            isinstance(value, type)
            and issubclass(value, ProblemError)
            and value not in (ProblemError, PeerProblem, ServiceProblem, UpstreamProblem)
        ):
            found.add(value)
    return found


class TestProblemTable:
    """Every problem class carries the protocol's name and status."""

    @pytest.mark.parametrize(("cls", "name", "status"), ALL_TABLE)
    def test_name_and_status(self, cls: type[ProblemError], name: str, status: int) -> None:
        """The class attributes are the protocol's problem name and HTTP status."""
        assert cls.problem == name
        assert cls.status == status
        exc = cls("a detail")
        assert exc.problem == name
        assert exc.status == status
        assert exc.title

    def test_table_covers_every_class(self) -> None:
        """No problem class exists outside the table (so none is left untested)."""
        assert _concrete_problem_classes() == {cls for cls, _, _ in ALL_TABLE}

    @pytest.mark.parametrize(("cls", "name", "status"), ALL_TABLE)
    def test_peer_or_service_side(self, cls: type[ProblemError], name: str, status: int) -> None:
        """4xx problems are the peer's (PeerProblem), 5xx ours (ServiceProblem)."""
        assert issubclass(cls, PeerProblem if status < 500 else ServiceProblem)
        assert issubclass(cls, GatewayError)

    def test_problem_names_are_unique(self) -> None:
        """No two classes share a problem name."""
        names = [name for _, name, _ in ALL_TABLE]
        assert len(names) == len(set(names))


class TestToProblem:
    """The RFC 9457 document of a refusal."""

    @pytest.mark.parametrize(("cls", "name", "status"), ALL_TABLE)
    def test_document(self, cls: type[ProblemError], name: str, status: int) -> None:
        """type is urn:gateway:problem:{name}; title, status and detail are set; no audit_id."""
        doc = cls("what went wrong").to_problem()
        assert doc == {
            "type": f"urn:gateway:problem:{name}",
            "title": cls.title,
            "status": status,
            "detail": "what went wrong",
        }
        assert PROBLEM_TYPE_PREFIX == "urn:gateway:problem:"

    def test_audit_id_included_when_set(self) -> None:
        """Once an audit record is written, its index appears as ``audit_id``."""
        exc = Replay("seen before")
        exc.audit_id = 0
        assert exc.to_problem()["audit_id"] == 0
        exc.audit_id = 42
        assert exc.to_problem()["audit_id"] == 42

    def test_audit_detail_defaults_to_detail(self) -> None:
        """Without a separate audit detail the audit log gets the public detail."""
        assert EnvelopeInvalid("bad").audit_detail == "bad"

    def test_audit_detail_never_in_document(self) -> None:
        """The audit-only reason is not rendered to the peer."""
        exc = SignatureInvalid("does not verify", audit_detail="secret inner reason")
        assert exc.audit_detail == "secret inner reason"
        assert "secret inner reason" not in str(exc.to_problem())

    def test_retry_after_kept(self) -> None:
        """``retry_after`` is carried for the Retry-After header."""
        assert RateLimited("slow down", retry_after=7).retry_after == 7
        assert Overloaded("busy").retry_after is None

    def test_base_problem_error(self) -> None:
        """The base class renders as an internal error."""
        doc = ProblemError("boom").to_problem()
        assert doc["type"] == "urn:gateway:problem:internal-error"
        assert doc["status"] == 500


class TestUpstreamProblem:
    """A peer's refusal passed through unchanged."""

    def test_keeps_the_peer_document(self) -> None:
        """The peer's document, its audit_id included, is what our client sees."""
        document = {
            "type": "urn:gateway:problem:contract-denied",
            "title": "No contract",
            "status": 403,
            "detail": "suspended",
            "audit_id": 17,
        }
        exc = UpstreamProblem(document, retry_after=3)
        assert exc.to_problem() == document
        assert exc.problem == "contract-denied"
        assert exc.status == 403
        assert exc.title == "No contract"
        assert exc.detail == "suspended"
        assert exc.retry_after == 3
        assert isinstance(exc, ProblemError)

    def test_document_is_copied(self) -> None:
        """Later changes to the caller's dict do not alter the kept document."""
        document = {"type": "urn:gateway:problem:replay", "status": 409}
        exc = UpstreamProblem(document)
        document["status"] = 200
        assert exc.to_problem()["status"] == 409

    @pytest.mark.parametrize("status", [200, 399, 600, "403", None, True])
    def test_bad_status_becomes_502(self, status: object) -> None:
        """A status outside 400-599 or not an integer is replaced by 502."""
        exc = UpstreamProblem({"type": "urn:gateway:problem:x", "status": status})
        assert exc.status == 502

    def test_defaults_for_an_empty_document(self) -> None:
        """An empty document still gives a usable problem name, title and status."""
        exc = UpstreamProblem({})
        assert exc.problem == "upstream-error"
        assert exc.status == 502
        assert exc.title == "Refused by the provider"
        assert exc.detail == ""


class TestTokenRequestError:
    """RFC 6749 section 5.2 errors of the token endpoint."""

    @pytest.mark.parametrize(
        ("error", "status"),
        [
            ("invalid_request", 400),
            ("unsupported_grant_type", 400),
            ("invalid_client", 401),
            ("invalid_authorization_details", 400),
        ],
    )
    def test_statuses(self, error: str, status: int) -> None:
        """Each OAuth error code has the status of protocol 3.1."""
        exc = TokenRequestError(error, "why")
        assert exc.status == status
        assert exc.to_json() == {"error": error, "error_description": "why"}
        assert exc.audit_detail == "why"
        assert exc.audit_id is None

    def test_unknown_code_refused(self) -> None:
        """An error code outside the table is a programming error."""
        with pytest.raises(ValueError, match="unknown OAuth error code"):
            TokenRequestError("invalid_grant", "no")

    def test_audit_detail_kept_apart(self) -> None:
        """The audit reason is not in the JSON body."""
        exc = TokenRequestError("invalid_client", "client authentication failed", audit_detail="x")
        assert exc.audit_detail == "x"
        assert "x" not in exc.to_json().values()

    def test_not_a_problem_error(self) -> None:
        """Token errors are never rendered as problem+json."""
        assert not issubclass(TokenRequestError, ProblemError)
        assert issubclass(TokenRequestError, GatewayError)


class TestOtherErrors:
    """JOSE and setup errors."""

    def test_jose_tree(self) -> None:
        """MalformedJose and BadSignature are JoseErrors, not problems."""
        assert issubclass(MalformedJose, JoseError)
        assert issubclass(BadSignature, JoseError)
        assert not issubclass(JoseError, ProblemError)

    def test_setup_error_with_field(self) -> None:
        """A SetupError names the source, the field and the reason."""
        exc = SetupError("gateway.yaml", "must be positive", field="listen.port")
        assert str(exc) == "gateway.yaml: listen.port: must be positive"
        assert (exc.source, exc.field, exc.reason) == (
            "gateway.yaml",
            "listen.port",
            "must be positive",
        )

    def test_setup_error_without_field(self) -> None:
        """Without a field the message is source and reason."""
        exc = SetupError("keys/signing.pem", "cannot read")
        assert str(exc) == "keys/signing.pem: cannot read"
        assert exc.field is None

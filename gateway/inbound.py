"""The provider side: token requests and exchange requests from peer gateways.

``/v1/token`` (protocol 3.1) and ``/v1/services/{service}`` (3.3, 3.4). The
checks run in the protocol's order and stop at the first failure; every
grant, exchange and refusal is written to the audit log before the answer
leaves, and nothing is answered when the audit log cannot be written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from gateway.audit.records import AuditRecord, new_record_identity, record_time
from gateway.backend import Backend, BackendRequest
from gateway.bodies import HandedBody, strip_in_place
from gateway.contracts import Contract
from gateway.envelope import (
    EncodedBody,
    OpenedMessage,
    check_fresh,
    check_request_binding,
    open_request,
    seal_response,
)
from gateway.errors import (
    AuditUnavailable,
    BackendTimeout,
    ContractDenied,
    EnvelopeInvalid,
    Overloaded,
    PayloadTooLarge,
    ProblemError,
    RateLimited,
    Replay,
    TokenInvalid,
    TokenRequestError,
    UnknownService,
)
from gateway.jose import canonical_json
from gateway.metrics import OK, Phases
from gateway.runtime import Runtime
from gateway.tokens import (
    CLIENT_ASSERTION_TYPE,
    GRANT_TYPE,
    AccessToken,
    Grant,
    issue_access_token,
    parse_authorization_details,
    verify_client_assertion,
)

_TOKEN_PARAMETERS = (
    "grant_type",
    "client_assertion_type",
    "client_assertion",
    "authorization_details",
)


@dataclass
class ExchangeContext:
    """What is known so far about one inbound request, for its audit record."""

    started: float
    service: str | None = None
    token: AccessToken | None = None
    request: OpenedMessage | None = None
    contract: Contract | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # the backend's status, once it answered
    phases: Phases = field(default_factory=Phases)

    def audit_fields(self, runtime: Runtime) -> dict[str, Any]:
        """The record members this context can fill (never a clear subject or body)."""
        fields: dict[str, Any] = {
            "provider": runtime.agency,
            "service": self.service,
            "latency_us": elapsed_us(self.started),
        }
        if self.token is not None:
            grant = self.token.grant
            fields.update(
                consumer=self.token.consumer,
                contract=grant.contract,
                contract_version=grant.contract_version,
                purpose=grant.purpose,
            )
        if self.request is not None:
            claims = self.request.claims
            fields.update(
                jti=self.request.jti,
                req_hash=self.request.jws_hash,
                evidence=self.request.signature,
                client=claims["client"],
                subject=runtime.pseudonymize(claims["subject"]),
            )
            if isinstance(claims.get("end_user"), str):
                fields["end_user"] = runtime.pseudonymize(claims["end_user"])
        fields.update(self.extra)
        return fields


def elapsed_us(started: float) -> int:
    """Whole microseconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return int((time.perf_counter() - started) * 1_000_000)


async def write_audit(runtime: Runtime, **members: Any) -> int:
    """Build one record from ``members`` and append it durably; its index."""
    record = AuditRecord(
        **new_record_identity(),
        time=record_time(runtime.clock()),
        **_contract_terms(runtime, members.get("contract"), members.get("purpose")),
        **members,
    )
    return await runtime.audit.append(record)


def _contract_terms(runtime: Runtime, contract_id: object, purpose: object) -> dict[str, Any]:
    """What the contract said at the time: the purpose's legal basis, the retention duty."""
    contract = runtime.contracts.current.get(contract_id) if isinstance(contract_id, str) else None
    if contract is None:
        return {}
    basis = next((p.legal_basis for p in contract.purposes if p.id == purpose), None)
    return {"legal_basis": basis, "retention_days": contract.retention_days}


async def audit_refusal(
    runtime: Runtime, error: ProblemError, direction: str, members: Mapping[str, Any]
) -> None:
    """Record a refusal and put its index on the error (``audit_id``).

    ``members`` may override the record's ``detail`` (the consumer names a
    provider's refusal that way).
    """
    record: dict[str, Any] = {
        "kind": "refusal",
        "direction": direction,
        "outcome": "refused" if error.status < 500 else "error",
        "status": error.status,
        "problem": error.problem,
        "detail": error.audit_detail,
        **members,
    }
    error.audit_id = await write_audit(runtime, **record)


def _parse_form(content_type: str, raw: bytes | bytearray | None) -> dict[str, list[str]]:
    if content_type != "application/x-www-form-urlencoded":
        raise TokenRequestError("invalid_request", "the body must be form-urlencoded")
    if raw is None:
        raise TokenRequestError("invalid_request", "the form is too large")
    try:
        return parse_qs(raw.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenRequestError("invalid_request", "the form is not valid UTF-8") from exc


class Provider:
    """The provider pipeline of one gateway."""

    def __init__(self, runtime: Runtime, backend: Backend) -> None:
        self.runtime = runtime
        self.backend = backend

    # -- 3.1 token endpoint ------------------------------------------------

    async def token(
        self,
        content_type: str,
        raw: bytes | bytearray | None,
        members: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], int]:
        """Answer a token request (``raw`` None: too large): the answer and its audit index.

        Refusals are audited. ``members``, when given, receives the audit
        record's members as they become known (the caller logs some of them).
        """
        runtime = self.runtime
        started = time.perf_counter()
        members = {} if members is None else members
        members["provider"] = runtime.agency
        try:
            try:
                body = await self._grant(_parse_form(content_type, raw), members)
            except (TokenRequestError, Overloaded) as exc:
                # Overloaded: the replay cache is full; refused, and on the record like the rest.
                problem = exc.error if isinstance(exc, TokenRequestError) else exc.problem
                exc.audit_id = await write_audit(
                    runtime,
                    kind="refusal",
                    direction="inbound",
                    outcome="refused" if exc.status < 500 else "error",
                    status=exc.status,
                    problem=problem,
                    detail=exc.audit_detail,
                    latency_us=elapsed_us(started),
                    **members,
                )
                runtime.metrics.token_request(problem)
                raise
            index = await write_audit(
                runtime,
                kind="token",
                direction="inbound",
                outcome="ok",
                status=200,
                latency_us=elapsed_us(started),
                **members,
            )
        except AuditUnavailable as exc:
            runtime.metrics.token_request(exc.problem)
            raise
        runtime.metrics.token_request(
            OK,
            consumer=members["consumer"],
            contract=members["contract"],
            purpose=members["purpose"],
        )
        return body, index

    async def _grant(
        self, form: Mapping[str, Sequence[str]], members: dict[str, Any]
    ) -> dict[str, Any]:
        runtime = self.runtime
        for name in _TOKEN_PARAMETERS:
            values = form.get(name, ())
            if len(values) != 1 or not values[0]:
                state = "missing" if not values or not values[0] else "repeated"
                raise TokenRequestError("invalid_request", f"parameter {name} is {state}")
        if form["grant_type"][0] != GRANT_TYPE:
            raise TokenRequestError(
                "unsupported_grant_type", "grant_type must be client_credentials"
            )
        if form["client_assertion_type"][0] != CLIENT_ASSERTION_TYPE:
            raise TokenRequestError("invalid_request", "client_assertion_type is not jwt-bearer")
        requested = parse_authorization_details(form["authorization_details"][0])
        members.update(
            service=requested.service, contract=requested.contract, purpose=requested.purpose
        )
        now = runtime.now()
        assertion = verify_client_assertion(
            form["client_assertion"][0], runtime.agency, runtime.trusted(), now
        )
        members["consumer"] = assertion.consumer
        if not await runtime.replay.spend(assertion.consumer, assertion.jti, assertion.exp, now):
            raise TokenRequestError(
                "invalid_client", "client authentication failed", audit_detail="assertion replayed"
            )
        contract = runtime.contract(requested.contract)

        def refuse(reason: str) -> TokenRequestError:
            return TokenRequestError("invalid_authorization_details", reason)

        if contract is None:
            raise refuse("unknown contract")
        members["contract_version"] = contract.version
        if (contract.provider, contract.consumer, contract.service) != (
            runtime.agency,
            assertion.consumer,
            requested.service,
        ):
            raise refuse("the contract is not between these agencies for this service")
        if not contract.in_force(now):
            raise refuse("the contract is not in force")
        if not contract.allows_purpose(requested.purpose):
            raise refuse("the contract does not allow this purpose")
        grant = Grant(
            contract=contract.id,
            service=contract.service,
            purpose=requested.purpose,
            fields=tuple(contract.fields),
            contract_version=contract.version,
        )
        token = issue_access_token(
            provider=runtime.agency,
            key=runtime.keys.signing,
            consumer=assertion.consumer,
            jkt=assertion.key.kid,
            grant=grant,
            now=now,
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "authorization_details": [grant.to_json()],
        }

    # -- 3.3 / 3.4 exchange ------------------------------------------------

    def check_service(self, service: str, context: ExchangeContext) -> None:
        """Refuse a service this gateway does not offer (before anything else)."""
        context.service = service
        if service not in self.runtime.settings.services:
            raise UnknownService("this gateway does not offer that service")

    async def refuse(self, error: ProblemError, context: ExchangeContext) -> None:
        """Audit a refusal of an inbound exchange and count it."""
        try:
            with context.phases.timed("audit"):
                await audit_refusal(
                    self.runtime, error, "inbound", context.audit_fields(self.runtime)
                )
        except AuditUnavailable as exc:
            self._count(context, exc.problem)
            raise
        self._count(context, error.problem)

    def _count(self, context: ExchangeContext, outcome: str) -> None:
        """Count one finished inbound exchange; identities only once verified."""
        token = context.token
        self.runtime.metrics.exchange(
            "inbound",
            outcome,
            seconds=time.perf_counter() - context.started,
            phases=context.phases,
            peer=token.consumer if token else None,
            service=context.service,
            contract=token.grant.contract if token else None,
            purpose=token.grant.purpose if token else None,
        )

    async def exchange(
        self,
        service: str,
        authorization: str | None,
        content_type: str | None,
        body: HandedBody[bytearray],
        context: ExchangeContext,
    ) -> tuple[bytearray, int]:
        """Run checks 1-8, the backend and the field filter; the sealed response and index.

        A refusal is raised for the caller to pass to :meth:`refuse`; the
        exchange is counted there, or here when it succeeds or cannot be
        audited.
        """
        try:
            answer = await self._exchange(service, authorization, content_type, body, context)
        except AuditUnavailable as exc:
            self._count(context, exc.problem)
            raise
        self._count(context, OK)
        return answer

    async def _exchange(
        self,
        service: str,
        authorization: str | None,
        content_type: str | None,
        body: HandedBody[bytearray],
        context: ExchangeContext,
    ) -> tuple[bytearray, int]:
        runtime = self.runtime
        now = runtime.now()
        # 1. token-invalid
        scheme, _, compact = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not compact:
            raise TokenInvalid("an Authorization: Bearer access token is required")
        own_keys = (runtime.keys.signing.public,)
        with context.phases.timed("crypto"):
            token, cached = runtime.verified_tokens.verify(
                compact.strip(), runtime.agency, own_keys, now
            )
        runtime.metrics.verified_token_lookup(hit=cached)
        context.token = token
        # 2. envelope-invalid, 3. signature-invalid
        if (content_type or "").split(";")[0].strip().lower() != "application/jose":
            raise EnvelopeInvalid("Content-Type must be application/jose")
        # Parsed as the bytes received, with no text made of them (memory).
        jwe = HandedBody(strip_in_place(body.take()))
        request_size = len(jwe.data)
        with context.phases.timed("crypto"):
            # Handed over: the JWE is freed once decrypted, before its claims are parsed.
            request = open_request(
                jwe,
                decryption_keys=runtime.keys.decryption,
                token=token,
                registry=runtime.trusted(),
            )
        context.request = request
        # 4. binding-mismatch
        contract = runtime.contract(token.grant.contract)
        context.contract = contract
        check_request_binding(
            request,
            token,
            provider=runtime.agency,
            service=service,
            subject_field=contract.subject_field if contract else None,
        )
        # 5. stale-message
        check_fresh(request, now)
        # 6. replay: from here on the jti is spent, whatever the outcome
        claims = request.claims
        if not await runtime.replay.spend(claims["iss"], request.jti, claims["exp"], now):
            raise Replay("this message id was already used")
        # 7. contract-denied
        contract = self._contract_in_force(contract, token, request, now)
        if request_size > contract.max_request_bytes:
            raise PayloadTooLarge("the request is larger than the contract allows")
        # 8. rate-limited
        limit = contract.rate_limit
        wait = await runtime.rate_limiter.acquire(
            contract.id, limit.requests, limit.per_seconds, now
        )
        if wait:
            runtime.metrics.rate_limit(contract.id)
            raise RateLimited("the contract's rate limit is exhausted", retry_after=wait)
        # The message goes on in the context alone, so that _answer can let go of its body.
        del request, claims
        return await self._answer(service, contract, token, context)

    def _contract_in_force(
        self,
        contract: Contract | None,
        token: AccessToken,
        request: OpenedMessage,
        now: int,
    ) -> Contract:
        if contract is None:
            raise ContractDenied("the contract is not known to this provider")
        grant = token.grant
        if (contract.provider, contract.consumer, contract.service) != (
            self.runtime.agency,
            token.consumer,
            grant.service,
        ):
            raise ContractDenied("the contract is not between these agencies for this service")
        if contract.version != grant.contract_version:
            raise ContractDenied("the contract was replaced since the token was issued")
        if not contract.in_force(now):
            raise ContractDenied("the contract is not in force")
        if not contract.allows_purpose(grant.purpose):
            raise ContractDenied("the contract does not allow this purpose")
        if contract.requires_end_user and not request.claims.get("end_user"):
            raise ContractDenied("the contract requires an end_user")
        return contract

    async def _answer(
        self,
        service: str,
        contract: Contract,
        token: AccessToken,
        context: ExchangeContext,
    ) -> tuple[bytearray, int]:
        runtime = self.runtime
        settings = runtime.settings.services[service]
        request = context.request
        if request is None:  # pragma: no cover - _exchange opened it before calling
            raise RuntimeError("no opened request to answer")
        called = time.perf_counter()
        outgoing = BackendRequest(
            url=str(settings.backend_url),
            timeout=settings.timeout_seconds,
            body=HandedBody(canonical_json(request.body)),
            consumer=token.consumer,
            contract=contract.id,
            purpose=token.grant.purpose,
            exchange_id=request.jti,
        )
        # From here on nothing holds the parsed request body, only the backend call
        # its JSON; the message is kept for its binding and identities (memory).
        request = context.request = request.without_body()
        outcome = "backend-error"
        try:
            answer = await self.backend.call(outgoing)
            del outgoing
            outcome = OK
        except BackendTimeout:
            outcome = BackendTimeout.problem
            raise
        finally:
            runtime.metrics.backend_call(service, outcome, context.phases.add("backend", called))
        status = context.status = answer.status
        # The answer is ours alone: filtered where it is, not copied (memory).
        released = contract.field_filter.apply_in_place(answer.body)
        del answer
        fields = contract.field_filter.released_paths(released)
        # Encoded once for the audit log's hash and the signature; the parsed
        # copy, several times its JSON, is not held through the seal (memory).
        body = EncodedBody.of(released)
        del released
        recipient = runtime.trusted().encryption_key(token.consumer)
        if recipient is None:
            raise ContractDenied("the consumer has no encryption key in the registry")
        context.extra.update(fields=fields, resp_hash=body.hash)
        with context.phases.timed("audit"):
            index = await write_audit(
                runtime,
                kind="exchange",
                direction="inbound",
                outcome="ok",
                status=status,
                **context.audit_fields(runtime),
            )
        with context.phases.timed("crypto"):
            sealed = seal_response(
                provider=runtime.agency,
                consumer=token.consumer,
                request=request,
                status=status,
                fields=fields,
                body=body,
                audit={"index": index, "origin": runtime.origin},
                signing_key=runtime.keys.signing,
                recipient=recipient,
                now=runtime.now(),
            )
        return sealed.jwe, index

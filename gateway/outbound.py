"""The agency side: a client's request through our gateway to a provider (protocol 5).

Authenticate the client, pick the contract, get (or reuse) an access token,
seal the request, send it, verify the response, audit, and only then hand the
client the released body. Refusals from the provider are passed through.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeGuard

import aiohttp

from gateway.bodies import (
    HandedBody,
    read_bounded,
    request_body,
    strip_in_place,
)
from gateway.contracts import Contract
from gateway.envelope import EncodedBody, RequestBinding, open_response, seal_request
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    ContractDenied,
    Forbidden,
    MalformedJose,
    ProblemError,
    TokenInvalid,
    Unauthorized,
    UpstreamProblem,
    UpstreamUnreachable,
)
from gateway.inbound import audit_refusal, elapsed_us, write_audit
from gateway.jose import strict_json_object_taken
from gateway.metrics import OK, Phases
from gateway.observability import get_logger
from gateway.runtime import Runtime
from gateway.tokens import (
    CLIENT_ASSERTION_TYPE,
    GRANT_TYPE,
    RequestedGrant,
    make_client_assertion,
)
from gateway.tracing import outgoing_headers

# A cached token is not sent with less than this left, so no request races its expiry.
TOKEN_RENEW_MARGIN_SECONDS: Final = 30
# From this much left, a new token is asked for in the background while requests go on
# with the cached one. Were they to wait for it instead, every request in flight would
# stall for a token round trip each renewal, then reach the provider all at once.
TOKEN_RENEW_AHEAD_SECONDS: Final = 60

# A peer's answer larger than this is refused rather than buffered.
MAX_PEER_RESPONSE_BYTES: Final = 32 * 1024 * 1024

# Provider problems after which our cached token must not be used again.
_TOKEN_DROPPING_PROBLEMS: Final = frozenset({"token-invalid", "contract-denied"})


@dataclass(frozen=True)
class ClientRequest:
    """A client's call to ``/v1/exchange/{provider}/{service}``."""

    api_key: str | None
    provider: str
    service: str
    purpose: str | None
    contract: str | None
    end_user: str | None
    body: HandedBody[bytearray]  # taken once parsed (memory)


@dataclass(frozen=True)
class ExchangeResult:
    """What the client gets: the verified body, as the JSON to send, and the ids that trace it."""

    body: EncodedBody
    status: int
    exchange_id: str
    contract: str
    audit_index: int
    provider_audit_index: int | None


@dataclass(frozen=True)
class CachedToken:
    """An access token we hold for one (provider, contract, purpose)."""

    compact: str
    expires_at: int

    def good_for(self, seconds: int, now: int) -> bool:
        """Whether the token has more than ``seconds`` left at ``now``."""
        return self.expires_at - seconds > now


class PeerTransport(Protocol):
    """How we reach peer gateways: one pooled session in production."""

    async def post(
        self, url: str, *, data: bytes | bytearray | Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, str, bytearray, Mapping[str, str]]:
        """POST; (status, content type, body, headers), or ``UpstreamUnreachable``."""


class HttpPeerTransport:
    """Peer gateways over HTTP through one shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self._session = session
        self._timeout = timeout

    async def post(
        self, url: str, *, data: bytes | bytearray | Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, str, bytearray, Mapping[str, str]]:
        """POST within the upstream timeout; network failures are ``upstream-unreachable``."""
        # A child span of the client's request, so the provider's log lines of
        # this exchange carry the same trace id as ours.
        sent = {**headers, **outgoing_headers()}
        body: object = data
        if isinstance(data, bytes | bytearray):
            body, length = request_body(data)
            sent.update(length)
        # Once sent, the sealed request is not held while the answer is read (memory).
        del data
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(
                    url, data=body, headers=sent, allow_redirects=False
                ) as response:
                    del body
                    raw = await read_bounded(response.content, MAX_PEER_RESPONSE_BYTES)
                    if raw is None:
                        raise UpstreamUnreachable("the provider's answer is too large")
                    return (
                        response.status,
                        response.content_type,
                        raw,
                        dict(response.headers),
                    )
        except TimeoutError as exc:
            raise UpstreamUnreachable("the provider gateway did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                "the provider gateway could not be reached", audit_detail=type(exc).__name__
            ) from exc


@dataclass
class Consumer:
    """The consumer pipeline of one gateway."""

    runtime: Runtime
    transport: PeerTransport
    _tokens: dict[tuple[str, str, str], CachedToken] = field(default_factory=dict)
    _token_locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    # The token each key's last background renewal set out to replace: one try per token.
    _renewing: dict[tuple[str, str, str], CachedToken] = field(default_factory=dict)
    _renewals: set[asyncio.Task[None]] = field(default_factory=set)

    async def close(self) -> None:
        """Stop background token renewals (the gateway is shutting down)."""
        for task in self._renewals:
            task.cancel()
        await asyncio.gather(*self._renewals, return_exceptions=True)

    async def exchange(
        self, call: ClientRequest, members: dict[str, Any] | None = None
    ) -> ExchangeResult:
        """Run one exchange for a client; a ``ProblemError`` (audited) on refusal.

        ``members``, when given, receives the audit record's members as they
        become known (the caller logs the non-personal ones).
        """
        started = time.perf_counter()
        phases = Phases()
        members = {} if members is None else members
        members.update(
            consumer=self.runtime.agency,
            provider=call.provider,
            service=call.service,
            purpose=call.purpose,
        )
        if call.purpose and not _is_text(call.purpose):
            del members["purpose"]  # not UTF-8: no audit record can hold it
        try:
            result = await self._exchange(call, members, started, phases)
        except ProblemError as exc:
            members["latency_us"] = elapsed_us(started)
            if isinstance(exc, UpstreamProblem):
                members["detail"] = f"provider refused: {exc.problem}"
            await self.refuse(exc, members, started=started, phases=phases)
            raise
        self._count(OK, members, started, phases)
        return result

    async def refuse(
        self,
        error: ProblemError,
        members: dict[str, Any],
        *,
        started: float | None = None,
        phases: Phases | None = None,
    ) -> None:
        """Audit a refused outbound exchange (``members`` its record so far) and count it."""
        started = time.perf_counter() if started is None else started
        phases = phases or Phases()
        try:
            with phases.timed("audit"):
                await audit_refusal(self.runtime, error, "outbound", members)
        except AuditUnavailable as exc:
            self._count(exc.problem, members, started, phases)
            raise
        self._count(error.problem, members, started, phases)

    def _count(self, outcome: str, members: dict[str, Any], started: float, phases: Phases) -> None:
        """Count one finished outbound exchange; the contract and purpose once chosen."""
        chosen = "contract" in members
        self.runtime.metrics.exchange(
            "outbound",
            outcome,
            seconds=time.perf_counter() - started,
            phases=phases,
            peer=members.get("provider"),
            service=members.get("service"),
            contract=members["contract"] if chosen else None,
            purpose=members.get("purpose") if chosen else None,
        )

    async def _exchange(
        self, call: ClientRequest, members: dict[str, Any], started: float, phases: Phases
    ) -> ExchangeResult:
        runtime = self.runtime
        client = runtime.settings.client_for_key(call.api_key) if _is_text(call.api_key) else None
        if client is None:
            raise Unauthorized("a valid client API key is required")
        members["client"] = client
        for header, value in (
            ("X-Purpose", call.purpose),
            ("X-Contract", call.contract),
            ("X-End-User", call.end_user),
        ):
            if value is not None and not _is_text(value):
                members.pop("purpose", None)
                raise BadRequest(f"the {header} header is not UTF-8 text")
        if not call.purpose:
            raise BadRequest("the X-Purpose header is required")
        try:
            body = strict_json_object_taken(call.body.take)
        except MalformedJose as exc:
            raise BadRequest(f"the request body must be a JSON object of integers: {exc}") from exc
        contract = self._choose_contract(client, call)
        members.update(contract=contract.id, contract_version=contract.version)
        subject = body.get(contract.subject_field)
        if not isinstance(subject, str) or not subject:
            raise BadRequest(f"the body must name the subject in '{contract.subject_field}'")
        members["subject"] = runtime.pseudonymize(subject)
        if call.end_user:
            members["end_user"] = runtime.pseudonymize(call.end_user)
        elif contract.requires_end_user:
            raise BadRequest("the X-End-User header is required by this contract")
        registry = runtime.trusted()
        provider_url = registry.gateway_url(call.provider)
        recipient = registry.encryption_key(call.provider)
        if provider_url is None or recipient is None or not registry.is_active(call.provider):
            raise ContractDenied("the provider is not an active agency in the trust registry")
        grant = RequestedGrant(contract=contract.id, service=call.service, purpose=call.purpose)
        # Parsed, a body is several times its JSON: only its encoding is kept,
        # for the seal and, after token-invalid, the one retry (memory).
        encoded = EncodedBody.of(body)
        del body
        for attempt in range(2):
            token = await self._token(provider_url, call.provider, grant, phases)
            with phases.timed("crypto"):
                sealed = seal_request(
                    consumer=runtime.agency,
                    provider=call.provider,
                    service=call.service,
                    contract=contract.id,
                    purpose=call.purpose,
                    subject=subject,
                    client=client,
                    end_user=call.end_user or None,
                    body=encoded,
                    access_token=token,
                    signing_key=runtime.keys.signing,
                    recipient=recipient,
                    now=runtime.now(),
                )
            # The JWE is larger than the body: it is not held while the
            # answer is awaited and opened (memory).
            binding = sealed.binding
            outgoing = HandedBody(sealed.jwe)
            del sealed
            members.update(jti=binding.jti, req_hash=binding.req_hash)
            try:
                answer = await self._send(
                    provider_url=provider_url,
                    service=call.service,
                    token=token,
                    outgoing=outgoing,
                    phases=phases,
                )
            except UpstreamProblem as exc:
                if exc.problem in _TOKEN_DROPPING_PROBLEMS:
                    self._tokens.pop((call.provider, grant.contract, grant.purpose), None)
                # A token the provider no longer accepts (rotated key, replaced
                # contract) is renewed once; any other refusal is final.
                if exc.problem != "token-invalid" or attempt == 1:
                    raise
                continue
            # Answered: no retry is left, so the body's encoding is not held
            # while the answer is opened (memory).
            del encoded
            return await self._accept(
                answer,
                call=call,
                contract=contract,
                binding=binding,
                members=members,
                started=started,
                phases=phases,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _choose_contract(self, client: str, call: ClientRequest) -> Contract:
        runtime = self.runtime
        allowed = set(runtime.settings.clients[client].contracts)
        now = runtime.now()
        if call.contract:
            if call.contract not in allowed:
                raise Forbidden("this client may not use that contract")
            contract = runtime.contract(call.contract)
            if contract is None or (contract.consumer, contract.provider, contract.service) != (
                runtime.agency,
                call.provider,
                call.service,
            ):
                raise ContractDenied("no such contract with that provider for that service")
            if not contract.in_force(now):
                raise ContractDenied("the contract is not in force")
            if not contract.allows_purpose(call.purpose or ""):
                raise ContractDenied("the contract does not allow this purpose")
            return contract
        fitting = runtime.contracts.current.fitting(
            consumer=runtime.agency,
            provider=call.provider,
            service=call.service,
            purpose=call.purpose or "",
            now=now,
        )
        usable = [contract for contract in fitting if contract.id in allowed]
        if not fitting:
            raise ContractDenied("no contract in force allows this purpose for that service")
        if not usable:
            raise Forbidden("this client may not use the contract that fits")
        if len(usable) > 1:
            raise BadRequest("several contracts fit: name one with the X-Contract header")
        return usable[0]

    async def _token(
        self, provider_url: str, provider: str, grant: RequestedGrant, phases: Phases
    ) -> str:
        key = (provider, grant.contract, grant.purpose)
        now = self.runtime.now()
        cached = self._tokens.get(key)
        hit = cached is not None and cached.good_for(TOKEN_RENEW_MARGIN_SECONDS, now)
        self.runtime.metrics.token_cache_lookup(hit=hit)
        if cached is not None and hit:
            if not cached.good_for(TOKEN_RENEW_AHEAD_SECONDS, now):
                self._renew_in_background(key, cached, provider_url, grant)
            return cached.compact
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            # Another request (or a renewal) may have fetched one while we waited.
            cached = self._tokens.get(key)
            if cached is not None and cached.good_for(
                TOKEN_RENEW_MARGIN_SECONDS, self.runtime.now()
            ):
                return cached.compact
            fresh = await self._request_token(provider_url, provider, grant, phases)
            self._tokens[key] = fresh
            return fresh.compact

    def _renew_in_background(
        self,
        key: tuple[str, str, str],
        cached: CachedToken,
        provider_url: str,
        grant: RequestedGrant,
    ) -> None:
        """Ask for the successor of ``cached`` once, unless that was done already.

        A failed renewal is not tried again for the same token: the provider
        is not asked on every request. Once the token is too close to its
        expiry to send, requests fetch a new one themselves and see why not.
        """
        if self._renewing.get(key) is cached:
            return
        self._renewing[key] = cached
        task = asyncio.create_task(self._renew(key, provider_url, grant))
        self._renewals.add(task)
        task.add_done_callback(self._renewals.discard)

    async def _renew(
        self, key: tuple[str, str, str], provider_url: str, grant: RequestedGrant
    ) -> None:
        provider = key[0]
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached is not None and cached.good_for(
                TOKEN_RENEW_AHEAD_SECONDS, self.runtime.now()
            ):
                return  # a request fetched one meanwhile (the old one was refused)
            try:
                # Its phases are no request's: nobody waits for this token.
                self._tokens[key] = await self._request_token(
                    provider_url, provider, grant, Phases()
                )
            except ProblemError as exc:
                get_logger(agency=self.runtime.agency, component="outbound").warning(
                    "token_renewal_failed",
                    provider=provider,
                    contract=grant.contract,
                    problem=exc.problem,
                )

    async def _request_token(
        self, provider_url: str, provider: str, grant: RequestedGrant, phases: Phases
    ) -> CachedToken:
        runtime = self.runtime
        now = runtime.now()
        with phases.timed("crypto"):
            assertion = make_client_assertion(runtime.agency, provider, runtime.keys.signing, now)
        form = {
            "grant_type": GRANT_TYPE,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "authorization_details": json.dumps([grant.to_json()]),
        }
        with phases.timed("upstream"):
            status, content_type, raw, headers = await self.transport.post(
                f"{provider_url}/v1/token", data=form, headers={"Accept": "application/json"}
            )
        if status >= 500:
            # Not a verdict on our request (the provider cannot log, is overloaded...):
            # the client sees the provider's own problem, e.g. 503 audit-unavailable.
            raise _upstream_problem(status, content_type, raw, headers)
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise UpstreamUnreachable("the provider's token endpoint answered badly") from exc
        if not isinstance(answer, dict):
            raise UpstreamUnreachable("the provider's token endpoint answered badly")
        if status != 200:
            error = str(answer.get("error", "unknown"))
            if error == "invalid_authorization_details":
                raise ContractDenied(
                    "the provider refused a token for this contract and purpose",
                    audit_detail=f"token endpoint: {error}",
                )
            raise TokenInvalid(
                f"the provider refused our token request ({error})",
                audit_detail=f"token endpoint: {error}",
            )
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not isinstance(expires_in, int) or expires_in <= 0:
            raise UpstreamUnreachable("the provider's token endpoint answered badly")
        return CachedToken(compact=token, expires_at=now + min(expires_in, 300))

    async def _send(
        self,
        *,
        provider_url: str,
        service: str,
        token: str,
        outgoing: HandedBody[bytearray],
        phases: Phases,
    ) -> HandedBody[bytearray]:
        """POST the sealed request; the sealed answer's bytes, or the provider's refusal raised."""
        with phases.timed("upstream"):
            status, content_type, raw, headers = await self.transport.post(
                f"{provider_url}/v1/services/{service}",
                data=outgoing.take(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/jose"},
            )
        if status != 200:
            raise _upstream_problem(status, content_type, raw, headers)
        if content_type != "application/jose":
            raise UpstreamUnreachable("the provider answered with the wrong media type")
        # Handed over: freed once decrypted, before its claims are parsed (memory).
        return HandedBody(strip_in_place(raw))

    async def _accept(
        self,
        compact: HandedBody[bytearray],
        *,
        call: ClientRequest,
        contract: Contract,
        binding: RequestBinding,
        members: dict[str, Any],
        started: float,
        phases: Phases,
    ) -> ExchangeResult:
        """Open the provider's sealed answer (3.4), audit it and make the client's result."""
        runtime = self.runtime

        def within_contract(fields: list[str], body: Mapping[str, Any]) -> str | None:
            if not contract.field_filter.permits(fields):
                return "fields outside the contract"
            leaks = contract.field_filter.leaks(dict(body))
            return f"{len(leaks)} unlisted paths in the body" if leaks else None

        with phases.timed("crypto"):
            response = open_response(
                compact,
                decryption_keys=runtime.keys.decryption,
                registry=runtime.trusted(),
                provider=call.provider,
                consumer=runtime.agency,
                request=binding,
                within_contract=within_contract,
                now=runtime.now(),
            )
        # Encoded for the client now: the parsed body, several times its JSON, is
        # not held through the audit write (memory).
        body = EncodedBody.of(response.body)
        response = response.without_body()
        claims = response.claims
        provider_index = claims["audit"].get("index")
        members.update(
            fields=list(claims["fields"]),
            resp_hash=response.jws_hash,
            evidence=response.signature,
            latency_us=elapsed_us(started),
        )
        with phases.timed("audit"):
            index = await write_audit(
                runtime,
                kind="exchange",
                direction="outbound",
                outcome="ok",
                status=claims["status"],
                **members,
            )
        return ExchangeResult(
            body=body,
            status=claims["status"],
            exchange_id=binding.jti,
            contract=contract.id,
            audit_index=index,
            provider_audit_index=provider_index if isinstance(provider_index, int) else None,
        )


def _is_text(value: str | None) -> TypeGuard[str]:
    """A header value that is real Unicode (non-UTF-8 bytes arrive as surrogates)."""
    if not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _upstream_problem(
    status: int, content_type: str, raw: bytes | bytearray, headers: Mapping[str, str]
) -> ProblemError:
    """The provider's refusal as a passed-through problem, or ``upstream-unreachable``."""
    if content_type == "application/problem+json":
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("type"), str):
            retry = headers.get("Retry-After", "")
            return UpstreamProblem(
                {**document, "status": status},
                retry_after=int(retry) if retry.isdigit() else None,
            )
    return UpstreamUnreachable(f"the provider answered with status {status}")

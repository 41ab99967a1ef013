"""Speaking the exchange protocol by hand, as a peer gateway would (protocol 3).

Two kinds of builders live here:

* **Honest builders** use the project's own :mod:`gateway.tokens`,
  :mod:`gateway.envelope` and :mod:`gateway.jose` code paths to make token
  requests and sealed exchange requests, so a test can change one claim and
  keep everything else valid.
* **Raw builders** (:func:`raw_jws`, :func:`hmac_jws`, :func:`raw_jwe`) put
  compact JOSE objects together from base64url segments with nothing but
  ``cryptography``, so that attack cases (``alg: none``, HMAC with a public
  key, ``jku``/``jwk``/``crit``/``zip`` headers, forged ``kid``) can be
  expressed exactly.

:func:`custom_network` runs a demo network whose files a test changed before
start (configuration is only read at start), plus extra loopback apps such as
a misbehaving backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.bodies import HandedBody
from gateway.contracts import Contract, load_contract_file, sign_contract
from gateway.demo import demo_registry, running_network
from gateway.demo.network import BENEFITS, INCOME_CONTRACT, TAX, build_network
from gateway.envelope import REQUEST_JWE_TYP, REQUEST_JWS_TYP, RequestBinding, open_response
from gateway.jose import canonical_json, encrypt
from gateway.keys import (
    AgencyKeys,
    PrivateKey,
    PublicKey,
    b64url,
    b64url_decode,
    load_agency_keys,
    load_private_key,
)
from gateway.observability import configure_logging
from gateway.registry import build_registry_payload, sign_registry
from gateway.tokens import (
    CLIENT_ASSERTION_TYP,
    CLIENT_ASSERTION_TYPE,
    GRANT_TYPE,
    new_jti,
    token_hash,
)
from tests.conftest import LiveNetwork, free_port_base

SERVICE: Final = "income-records"
PURPOSE: Final = "benefit-eligibility"
END_USER: Final = "caseworker-17"
CLIENT: Final = "caseworker-app"
INCOME_FIELDS: Final = ("national_id", "taxable_income", "year")
PROBLEM_PREFIX: Final = "urn:gateway:problem:"

# Marks a claim or header member to leave out of what a builder makes.
DROP: Final[Any] = object()


# -- raw JOSE ------------------------------------------------------------------


def b64json(value: Mapping[str, Any]) -> str:
    """base64url of compact JSON."""
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _payload_bytes(payload: Mapping[str, Any] | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else canonical_json(payload)


def _sign(signing_input: bytes, key: PrivateKey) -> bytes:
    native = key.key
    if isinstance(native, ec.EllipticCurvePrivateKey):
        return bytes(ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, native))
    if isinstance(native, Ed25519PrivateKey):
        return bytes(OKPAlgorithm().sign(signing_input, native))
    raise TypeError("not a signing key")


def raw_jws(
    header: Mapping[str, Any],
    payload: Mapping[str, Any] | bytes,
    key: PrivateKey | None = None,
    *,
    signature: bytes | None = None,
) -> str:
    """A compact JWS with exactly ``header``; signed by ``key`` or with ``signature`` as given."""
    signing_input = f"{b64json(header)}.{b64url(_payload_bytes(payload))}"
    if signature is None:
        if key is None:
            raise ValueError("give a key or a signature")
        signature = _sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url(signature)}"


def hmac_jws(header: Mapping[str, Any], payload: Mapping[str, Any] | bytes, secret: bytes) -> str:
    """A compact JWS "signed" with HMAC-SHA-256 under ``secret`` (the key-confusion attack)."""
    signing_input = f"{b64json(header)}.{b64url(_payload_bytes(payload))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def tamper_signature(compact: str) -> str:
    """``compact`` with one bit of its signature flipped (still canonical base64url)."""
    head, payload, signature = compact.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def standard_header(typ: str, key: PrivateKey, /, **extra: Any) -> dict[str, Any]:
    """``{"typ", "alg", "kid"}`` for ``key`` plus ``extra`` (``DROP`` removes a member)."""
    header: dict[str, Any] = {"typ": typ, "alg": key.alg, "kid": key.kid}
    header.update(extra)
    return {name: value for name, value in header.items() if value is not DROP}


def _concat_kdf(shared: bytes, alg: str) -> bytes:
    """RFC 7518 4.6.2: Concat KDF for ECDH-ES+A256KW, no apu/apv."""
    other = (
        len(alg).to_bytes(4, "big")
        + alg.encode("ascii")
        + (0).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + (256).to_bytes(4, "big")
    )
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other).derive(shared)


def raw_jwe(
    plaintext: bytes,
    recipient: PublicKey,
    *,
    typ: Any = REQUEST_JWE_TYP,
    kid: str | None = None,
    **extra: Any,
) -> str:
    """A compact JWE (ECDH-ES+A256KW, A256GCM) built by hand with any extra header members.

    ``kid`` defaults to the recipient's; ``extra`` members are added to the
    protected header (``DROP`` removes a standard one), so ``zip``, ``jku``
    or a wrong ``kid`` can be sent while the ciphertext stays decryptable.
    """
    public = recipient.key
    epk: dict[str, str]
    if isinstance(public, X25519PublicKey):
        ephemeral = X25519PrivateKey.generate()
        shared = ephemeral.exchange(public)
        raw = ephemeral.public_key().public_bytes_raw()
        epk = {"kty": "OKP", "crv": "X25519", "x": b64url(raw)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        ephemeral_ec = ec.generate_private_key(ec.SECP256R1())
        shared = ephemeral_ec.exchange(ec.ECDH(), public)
        numbers = ephemeral_ec.public_key().public_numbers()
        epk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
    else:  # pragma: no cover - the demo's keys are X25519 or P-256
        raise TypeError("not an encryption key")
    header: dict[str, Any] = {
        "alg": "ECDH-ES+A256KW",
        "enc": "A256GCM",
        "kid": kid or recipient.kid,
        "cty": "JWT",
        "typ": typ,
        "epk": epk,
    }
    header.update(extra)
    header = {name: value for name, value in header.items() if value is not DROP}
    kek = _concat_kdf(shared, "ECDH-ES+A256KW")
    cek = os.urandom(32)
    iv = os.urandom(12)
    protected = b64json(header)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:]
    segments = (aes_key_wrap(kek, cek), iv, ciphertext, tag)
    return ".".join([protected, *(b64url(part) for part in segments)])


# -- honest builders -------------------------------------------------------------


def details(
    contract: str = INCOME_CONTRACT,
    service: str = SERVICE,
    purpose: str = PURPOSE,
    type_: str = "data_exchange",
) -> str:
    """The ``authorization_details`` parameter: a JSON array of one object."""
    entry = {"type": type_, "contract": contract, "service": service, "purpose": purpose}
    return json.dumps([entry])


def assertion_claims(now: int, **overrides: Any) -> dict[str, Any]:
    """Client assertion claims (3.1), valid 60 s from ``now``; ``DROP`` removes one.

    ``sub`` defaults to ``iss`` (social-benefits), ``aud`` to tax-authority.
    """
    iss = overrides.get("iss", BENEFITS)
    claims: dict[str, Any] = {
        "iss": iss,
        "sub": iss,
        "aud": TAX,
        "jti": new_jti(),
        "iat": now,
        "exp": now + 60,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not DROP}


def token_form(
    assertion: str, authorization_details: str | None = None, **overrides: Any
) -> list[tuple[str, str]]:
    """The token request form as pairs (so a test can repeat or drop a parameter)."""
    form: dict[str, Any] = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        "authorization_details": details()
        if authorization_details is None
        else authorization_details,
    }
    form.update(overrides)
    return [(name, value) for name, value in form.items() if value is not DROP]


async def pieces(data: bytes, count: int = 2, pause: float = 0.02) -> AsyncIterator[bytes]:
    """``data`` as ``count`` writes with a pause between them (a body arriving in parts)."""
    step = -(-len(data) // count)
    for start in range(0, len(data), step):
        if start:
            await asyncio.sleep(pause)
        yield data[start : start + step]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers, raw body and the JSON body if there is one."""

    status: int
    headers: Mapping[str, str]
    raw: bytes
    content_type: str

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.raw)

    @property
    def problem(self) -> str | None:
        """The problem name of a problem+json answer, else None."""
        if self.content_type != "application/problem+json":
            return None
        return str(self.json["type"]).removeprefix(PROBLEM_PREFIX)


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Answer:
    """POST and read the whole answer."""
    async with session.post(url, **kwargs) as response:
        raw = await response.read()
        return Answer(response.status, dict(response.headers), raw, response.content_type)


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Answer:
    """GET and read the whole answer."""
    async with session.get(url, **kwargs) as response:
        raw = await response.read()
        return Answer(response.status, dict(response.headers), raw, response.content_type)


@dataclass(frozen=True)
class CraftedRequest:
    """A request a test peer sealed: the JWE to send, and its inner JWS for the tests about it."""

    jwe: str
    jws: str
    jti: str

    @property
    def binding(self) -> RequestBinding:
        """What the provider's response must name."""
        return RequestBinding(jti=self.jti, req_hash=token_hash(self.jws))


@dataclass
class Peer:
    """``consumer`` speaking the wire protocol directly to ``provider`` in a live network."""

    net: LiveNetwork
    consumer: str = BENEFITS
    provider: str = TAX
    service: str = SERVICE
    contract: str = INCOME_CONTRACT
    purpose: str = PURPOSE

    def keys_of(self, agency: str) -> AgencyKeys:
        """Any agency's private keys, from the network folder."""
        return load_agency_keys(self.net.directory / self.net.agency(agency)["keys"])

    @cached_property
    def keys(self) -> AgencyKeys:
        """The consumer's own keys."""
        return self.keys_of(self.consumer)

    @cached_property
    def revoked(self) -> AgencyKeys:
        """A key pair social-benefits once used, not in the registry."""
        return load_agency_keys(self.net.directory / "keys" / "social-benefits-revoked")

    @property
    def provider_url(self) -> str:
        """The provider's gateway URL."""
        return self.net.url(self.provider)

    @property
    def service_url(self) -> str:
        """``/v1/services/{service}`` on the provider."""
        return f"{self.provider_url}/v1/services/{self.service}"

    @property
    def recipient(self) -> PublicKey:
        """The provider's encryption key from the registry."""
        key = self.net.registry.encryption_key(self.provider)
        assert key is not None
        return key

    def assertion(self, now: int | None = None, **overrides: Any) -> str:
        """A valid client assertion signed by the consumer (claims overridable)."""
        now = int(time.time()) if now is None else now
        claims = assertion_claims(now, **{"iss": self.consumer, "aud": self.provider, **overrides})
        header = standard_header(CLIENT_ASSERTION_TYP, self.keys.signing)
        return raw_jws(header, claims, self.keys.signing)

    def form(self, assertion: str | None = None, **overrides: Any) -> list[tuple[str, str]]:
        """A token request form for this peer's contract, service and purpose."""
        overrides.setdefault(
            "authorization_details", details(self.contract, self.service, self.purpose)
        )
        return token_form(assertion or self.assertion(), **overrides)

    async def token_request(
        self, session: aiohttp.ClientSession, form: Sequence[tuple[str, str]] | None = None
    ) -> Answer:
        """POST a token request (by default a valid one)."""
        return await post(session, f"{self.provider_url}/v1/token", data=form or self.form())

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A fresh access token for this peer's grant."""
        answer = await self.token_request(session)
        assert answer.status == 200, answer.raw
        token: str = answer.json["access_token"]
        return token

    def claims(
        self, token: str, subject: str, /, *, now: int | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Exchange request claims (3.3) bound to ``token``; ``DROP`` removes one.

        The default ``body`` names ``subject`` in ``national_id``.
        """
        now = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self.consumer,
            "aud": self.provider,
            "jti": new_jti(),
            "iat": now,
            "exp": now + 120,
            "ath": token_hash(token),
            "svc": self.service,
            "contract": self.contract,
            "purpose": self.purpose,
            "subject": subject,
            "end_user": END_USER,
            "client": CLIENT,
            "body": {"national_id": subject, "year": 2025},
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not DROP}

    def seal(
        self,
        claims: Mapping[str, Any],
        *,
        signing_key: PrivateKey | None = None,
        header: Mapping[str, Any] | None = None,
        recipient: PublicKey | None = None,
    ) -> CraftedRequest:
        """Sign ``claims`` (header overridable) and encrypt with the project's JWE code."""
        key = signing_key or self.keys.signing
        jws = raw_jws(standard_header(REQUEST_JWS_TYP, key, **(header or {})), claims, key)
        jwe = encrypt(jws.encode("ascii"), recipient or self.recipient, REQUEST_JWE_TYP)
        return CraftedRequest(jwe=jwe.decode("ascii"), jws=jws, jti=str(claims.get("jti")))

    async def send(
        self,
        session: aiohttp.ClientSession,
        body: str | bytes | AsyncIterator[bytes],
        token: str | None,
        *,
        content_type: str | None = "application/jose",
        service: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST ``body`` to ``/v1/services/{service}`` with the Bearer ``token``."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if content_type is not None:
            sent["Content-Type"] = content_type
        url = f"{self.provider_url}/v1/services/{service or self.service}"
        data = (
            io.BytesIO(body.encode("ascii") if isinstance(body, str) else body)
            if isinstance(body, str | bytes)
            else body
        )
        return await post(session, url, data=data, headers=sent)

    def open(self, answer: Answer, request: CraftedRequest) -> Mapping[str, Any]:
        """Decrypt and verify a 200 answer as the consumer would; its claims."""
        opened = open_response(
            HandedBody(answer.raw.decode("ascii")),
            decryption_keys=self.keys.decryption,
            registry=self.net.registry,
            provider=self.provider,
            consumer=self.consumer,
            request=request.binding,
            within_contract=lambda _fields, _body: None,
            now=int(time.time()),
        )
        return opened.claims


# -- audit stores -----------------------------------------------------------------


def audit_path(net: LiveNetwork, agency: str) -> Path:
    """The SQLite audit store of ``agency`` (``sqlite:audit.db`` beside its config)."""
    return net.directory / agency / "audit.db"


def audit_records(path: Path) -> list[tuple[int, bytes]]:
    """Every (index, leaf bytes) of an audit store, read with a separate connection."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT idx, leaf FROM audit_leaves ORDER BY idx").fetchall()
    return [(int(index), bytes(leaf)) for index, leaf in rows]


def audit_record(path: Path, index: int) -> dict[str, Any]:
    """One audit record as JSON."""
    for found, leaf in audit_records(path):
        if found == index:
            record: dict[str, Any] = json.loads(leaf)
            return record
    raise KeyError(index)


def count_records(path: Path, **match: Any) -> int:
    """How many records of the store have every member of ``match``."""
    total = 0
    for _, leaf in audit_records(path):
        record = json.loads(leaf)
        total += all(record.get(name) == value for name, value in match.items())
    return total


# -- networks whose files a test changes before they start ------------------------


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


AppFactory = Callable[[], web.Application]


@contextlib.contextmanager
def custom_network(
    directory: Path,
    prepare: Callable[[Path, dict[str, Any]], None] | None = None,
    extra_apps: Mapping[int, AppFactory] | None = None,
) -> Iterator[LiveNetwork]:
    """Like ``tests.conftest.live_network``, with ``prepare`` run on the files before start.

    ``extra_apps`` maps loopback ports to application factories served in the
    same background loop (a test's own backends).
    """
    configure_logging("warning", "json")
    demo = build_network(directory, free_port_base(), datetime.now(UTC))
    if prepare is not None:
        prepare(directory, demo)
    started = threading.Event()
    stop: list[asyncio.Event] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop.append(asyncio.Event())
        runners = []
        try:
            for port, factory in (extra_apps or {}).items():
                runner = web.AppRunner(factory(), access_log=None, shutdown_timeout=0.1)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                runners.append(runner)
            async with running_network(directory, demo):
                started.set()
                await stop[0].wait()
        finally:
            for runner in runners:
                await runner.cleanup()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="custom-network", daemon=True)
    thread.start()
    started.wait(timeout=60)
    if failure:
        raise failure[0]
    try:
        yield LiveNetwork(directory=directory, demo=demo, registry=demo_registry(directory))
    finally:
        if stop:
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=60)
        loop.close()
        if failure:
            raise failure[0]


# -- contract files changed while a network runs ----------------------------------


def rewrite_contract(net: LiveNetwork, contract_id: str, **changes: Any) -> None:
    """Change the provider's copy of a contract and re-sign it with both parties' keys.

    The file is replaced atomically, so the reloader never sees half a file.
    """
    path = net.directory / TAX / "contracts" / f"{contract_id}.yaml"
    current = load_contract_file(path)
    data = {**current.model_dump(exclude={"signatures"}), **changes}
    contract = Contract.model_validate(data)
    for agency in contract.parties:
        keys = load_agency_keys(net.directory / net.agency(agency)["keys"])
        contract = sign_contract(contract, agency, keys.signing)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(contract.model_dump(mode="json"), sort_keys=False))
    os.replace(temporary, path)


def republish_registry(net: LiveNetwork, statuses: Mapping[str, str]) -> None:
    """Re-sign the network's trust registry with a higher serial and changed agency statuses."""
    source_path = net.directory / "registry.yaml"
    source = yaml.safe_load(source_path.read_text())
    source["serial"] += 1
    for agency in source["agencies"]:
        agency["status"] = statuses.get(agency["id"], agency["status"])
    source_path.write_text(yaml.safe_dump(source, sort_keys=False))
    authority = load_private_key(net.directory / "authority" / "signing.pem", "sig")
    payload = build_registry_payload(source_path, int(time.time()))
    target = net.directory / "registry.jws"
    temporary = target.with_name(".registry.jws.tmp")
    temporary.write_text(sign_registry(payload, authority) + "\n", encoding="ascii")
    os.replace(temporary, target)


async def wait_for_grant(
    peer: Peer, session: aiohttp.ClientSession, accept: Callable[[Answer], bool]
) -> Answer:
    """Ask for tokens until ``accept`` likes the answer (the gateway reloads every second)."""
    deadline = time.monotonic() + 15
    while True:
        answer = await peer.token_request(session)
        if accept(answer):
            return answer
        assert time.monotonic() < deadline, answer.raw
        await asyncio.sleep(0.2)


def granted_version(answer: Answer) -> int | None:
    """The ``contract_version`` a token answer grants, or None for a refusal."""
    if answer.status != 200:
        return None
    version: int = answer.json["authorization_details"][0]["contract_version"]
    return version


# -- assertions -------------------------------------------------------------------


def assert_problem(
    answer: Answer, name: str, status: int, *, audited: bool = True
) -> dict[str, Any]:
    """``answer`` is the RFC 9457 refusal ``name`` with ``status`` (and an integer audit_id)."""
    assert answer.status == status, (answer.status, answer.raw[:300])
    assert answer.content_type == "application/problem+json", answer.content_type
    document: dict[str, Any] = answer.json
    assert document["type"] == PROBLEM_PREFIX + name, document
    assert document["status"] == status
    assert isinstance(document["title"], str)
    assert isinstance(document["detail"], str)
    assert b"Traceback" not in answer.raw
    if audited:
        audit_id = document.get("audit_id")
        assert isinstance(audit_id, int), document
        assert not isinstance(audit_id, bool)
        assert audit_id >= 0
    return document


def assert_token_error(answer: Answer, error: str, status: int) -> None:
    """``answer`` is the RFC 6749 5.2 error ``error`` (never problem+json) with ``status``."""
    assert answer.status == status, (answer.status, answer.raw[:300])
    assert answer.content_type == "application/json", answer.content_type
    assert "no-store" in answer.headers.get("Cache-Control", "")
    body = answer.json
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str)
    assert "type" not in body

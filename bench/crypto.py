"""Scenario F: the cryptography of one exchange, through the project's code and bare.

One exchange makes, over both gateways, 2 signatures, 2 verifications,
2 JWE seals and 2 JWE opens. The access token is fetched once per
(provider, contract, purpose) and cached for minutes by the consumer, so its
grant is not part of an exchange; the provider verifies a token the first
time it sees it and then finds it in its cache of verified tokens
(``tokens.VerifiedTokenCache``, protocol 3.2), so its signature check is not
part of an exchange either (the issue's first count, 3 verifications, is
kept beside it as ``floor_with_token_verify``):

=========================  ==================================================
consumer                   ``envelope.seal_request``: sign the request JWS,
                           encrypt it to the provider (1 sign, 1 seal)
provider                   ``VerifiedTokenCache.verify``: a cache hit
provider                   ``envelope.open_request``: decrypt, verify the
                           consumer's signature (1 open, 1 verify)
provider                   ``envelope.seal_response`` (1 sign, 1 seal)
consumer                   ``envelope.open_response`` (1 open, 1 verify)
=========================  ==================================================

``project`` times exactly those five calls of ``gateway.envelope`` and
``gateway.tokens`` (over ``gateway.jose``, which composes ``cryptography``),
with the benchmark's request and record as bodies. ``floor`` times only the
``cryptography`` primitives the same messages need: Ed25519 sign and verify
over signing inputs of the same lengths, and for each JWE an ephemeral X25519
key, the key agreement, Concat KDF, AES key wrap and AES-256-GCM over a
plaintext of the same length, and their inverses. No JSON, no base64, no
header checks: the cost no implementation of this protocol can avoid.

CPU time is ``time.process_time()`` over batches of exchanges; the figure is
the median batch's time per exchange.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from bench.payloads import RECORD_FIELDS, record_bytes, request_bytes
from gateway.bodies import HandedBody
from gateway.envelope import (
    REQUEST_JWE_TYP,
    RESPONSE_JWE_TYP,
    EncodedBody,
    SealedMessage,
    open_request,
    open_response,
    seal_request,
)
from gateway.envelope import seal_response as seal_response_message
from gateway.jose import decrypt
from gateway.keys import ENC_ALG, PrivateKey, PublicKey, generate_private_keys
from gateway.tokens import Grant, VerifiedTokenCache, issue_access_token

CONSUMER: Final = "social-benefits"
PROVIDER: Final = "tax-authority"
SERVICE: Final = "income-records"
CONTRACT: Final = "bench-income"
PURPOSE: Final = "benefit-eligibility"

# Concat KDF "other info" of ECDH-ES+A256KW (RFC 7518 4.6.2): AlgorithmID, empty
# PartyUInfo and PartyVInfo, SuppPubInfo = key length in bits.
_OTHER_INFO: Final = (
    len(ENC_ALG).to_bytes(4, "big")
    + ENC_ALG.encode("ascii")
    + (0).to_bytes(4, "big")
    + (0).to_bytes(4, "big")
    + (256).to_bytes(4, "big")
)


class _Registry:
    """The two agencies' signing keys, as the trust registry would answer."""

    def __init__(self, keys: dict[str, PublicKey]) -> None:
        self._keys = keys

    def signing_key(self, agency_id: str, kid: str) -> PublicKey | None:
        key = self._keys.get(agency_id)
        return key if key is not None and key.kid == kid else None


@dataclass(frozen=True)
class _Agency:
    signing: PrivateKey
    encryption: PrivateKey


def seal_bench_request(
    body: dict[str, Any], *, token: str, signing_key: PrivateKey, recipient: PublicKey, now: int
) -> SealedMessage:
    """The bench client's request ``body`` sealed as the consumer gateway seals it (fresh jti)."""
    return seal_request(
        consumer=CONSUMER,
        provider=PROVIDER,
        service=SERVICE,
        contract=CONTRACT,
        purpose=PURPOSE,
        subject=body["national_id"],
        client="bench-client",
        end_user="caseworker-17",
        body=EncodedBody.of(body),
        access_token=token,
        signing_key=signing_key,
        recipient=recipient,
        now=now,
    )


def _agency() -> _Agency:
    signing, encryption = generate_private_keys("ed25519")
    return _Agency(signing=signing, encryption=encryption)


def _released(fields: list[str], body: Any) -> str | None:
    return None


class ExchangeCrypto:
    """The keys, token and bodies of one exchange, and the exchange's crypto calls."""

    def __init__(self, payload: int) -> None:
        self.consumer = _agency()
        self.provider = _agency()
        self.registry = _Registry(
            {CONSUMER: self.consumer.signing.public, PROVIDER: self.provider.signing.public}
        )
        self.request_body = json.loads(request_bytes(payload))
        self.record = json.loads(record_bytes(payload))
        self.fields = sorted(RECORD_FIELDS)
        now = int(time.time())
        self.token = issue_access_token(
            provider=PROVIDER,
            key=self.provider.signing,
            consumer=CONSUMER,
            jkt=self.consumer.signing.kid,
            grant=Grant(
                contract=CONTRACT,
                service=SERVICE,
                purpose=PURPOSE,
                fields=tuple(RECORD_FIELDS),
                contract_version=1,
            ),
            now=now,
        )
        self.sizes: dict[str, int] = {}
        self.verified_tokens = VerifiedTokenCache()

    def seal_request(self, now: int) -> SealedMessage:
        """Consumer: 1 sign, 1 seal."""
        return seal_bench_request(
            self.request_body,
            token=self.token,
            signing_key=self.consumer.signing,
            recipient=self.provider.encryption.public,
            now=now,
        )

    def exchange(self, timings: dict[str, list[float]] | None = None) -> None:
        """One exchange's five calls; each one's wall time appended to ``timings``."""
        now = int(time.time())
        clock = time.perf_counter
        t0 = clock()
        sealed = self.seal_request(now)
        t1 = clock()
        token, _ = self.verified_tokens.verify(
            self.token, PROVIDER, (self.provider.signing.public,), now
        )
        t2 = clock()
        opened = open_request(
            HandedBody(sealed.jwe),
            decryption_keys=(self.provider.encryption,),
            token=token,
            registry=self.registry,
        )
        t3 = clock()
        response = seal_response_message(
            provider=PROVIDER,
            consumer=CONSUMER,
            request=opened,
            status=200,
            fields=self.fields,
            body=EncodedBody.of(self.record),
            audit={"index": 1_000_000, "origin": f"{PROVIDER}/audit"},
            signing_key=self.provider.signing,
            recipient=self.consumer.encryption.public,
            now=now,
        )
        t4 = clock()
        open_response(
            HandedBody(response.jwe),
            decryption_keys=(self.consumer.encryption,),
            registry=self.registry,
            provider=PROVIDER,
            consumer=CONSUMER,
            request=sealed.binding,
            within_contract=_released,
            now=now,
        )
        t5 = clock()
        if timings is not None:
            for name, took in (
                ("seal_request", t1 - t0),
                ("verified_token_cache", t2 - t1),
                ("open_request", t3 - t2),
                ("seal_response", t4 - t3),
                ("open_response", t5 - t4),
            ):
                timings.setdefault(name, []).append(took)
        if not self.sizes:
            self.sizes = {
                "request_jws": len(
                    decrypt(sealed.jwe, (self.provider.encryption,), REQUEST_JWE_TYP)
                ),
                "request_jwe": len(sealed.jwe),
                "response_jws": len(
                    decrypt(response.jwe, (self.consumer.encryption,), RESPONSE_JWE_TYP)
                ),
                "response_jwe": len(response.jwe),
                "access_token": len(self.token),
            }


class Floor:
    """The bare primitives of one exchange over messages of the project's sizes."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sign_keys = (Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())
        self.verify_keys = tuple(key.public_key() for key in self.sign_keys)
        self.recipients = (X25519PrivateKey.generate(), X25519PrivateKey.generate())
        self.recipient_publics = tuple(key.public_key() for key in self.recipients)
        # Signing inputs are about 3/4 of a compact JWS (the 86-character signature excluded).
        self.inputs = (
            os.urandom(sizes["request_jws"] - 87),
            os.urandom(sizes["response_jws"] - 87),
            os.urandom(sizes["access_token"] - 87),
        )
        self.plaintexts = (os.urandom(sizes["request_jws"]), os.urandom(sizes["response_jws"]))
        self.aad = os.urandom(160)
        self.token_signature = self.sign_keys[1].sign(self.inputs[2])

    def _seal(self, recipient: X25519PublicKey, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
        ephemeral = X25519PrivateKey.generate()
        epk = ephemeral.public_key().public_bytes_raw()
        kek = ConcatKDFHash(hashes.SHA256(), 32, _OTHER_INFO).derive(ephemeral.exchange(recipient))
        cek, iv = os.urandom(32), os.urandom(12)
        wrapped = aes_key_wrap(kek, cek)
        return epk, wrapped, iv + AESGCM(cek).encrypt(iv, plaintext, self.aad)

    def _open(self, key: X25519PrivateKey, sealed: tuple[bytes, bytes, bytes]) -> bytes:
        epk, wrapped, ciphertext = sealed
        shared = key.exchange(X25519PublicKey.from_public_bytes(epk))
        kek = ConcatKDFHash(hashes.SHA256(), 32, _OTHER_INFO).derive(shared)
        cek = aes_key_unwrap(kek, wrapped)
        return AESGCM(cek).decrypt(ciphertext[:12], ciphertext[12:], self.aad)

    def exchange(self) -> None:
        """2 signs, 2 verifies, 2 seals, 2 opens."""
        consumer_sign, provider_sign = self.sign_keys
        consumer_verify, provider_verify = self.verify_keys
        request_input, response_input, _ = self.inputs
        signature = consumer_sign.sign(request_input)
        request = self._seal(self.recipient_publics[1], self.plaintexts[0])
        self._open(self.recipients[1], request)
        consumer_verify.verify(signature, request_input)
        signature = provider_sign.sign(response_input)
        response = self._seal(self.recipient_publics[0], self.plaintexts[1])
        self._open(self.recipients[0], response)
        provider_verify.verify(signature, response_input)

    def exchange_with_token_verify(self) -> None:
        """:meth:`exchange` and the access token's signature check: 3 verifies."""
        self.exchange()
        self.verify_keys[1].verify(self.token_signature, self.inputs[2])


def _per_exchange(work: Callable[[], None], batches: int, per_batch: int) -> dict[str, Any]:
    """CPU seconds per exchange of ``work``: the median over ``batches`` batches."""
    for _ in range(max(1, per_batch // 10)):  # warm caches (joserfc key import, allocator)
        work()
    cpu = []
    for _ in range(batches):
        started = time.process_time()
        for _ in range(per_batch):
            work()
        cpu.append((time.process_time() - started) / per_batch)
    return {
        "cpu_us_per_exchange": round(statistics.median(cpu) * 1e6, 1),
        "cpu_us_min": round(min(cpu) * 1e6, 1),
        "cpu_us_max": round(max(cpu) * 1e6, 1),
        "batches": batches,
        "exchanges_per_batch": per_batch,
    }


def _primitive_us(work: Callable[[], object], count: int = 400) -> float:
    """Median wall microseconds of one call of ``work``."""
    took = []
    for _ in range(count):
        started = time.perf_counter()
        work()
        took.append(time.perf_counter() - started)
    return round(statistics.median(took) * 1e6, 2)


def primitives() -> dict[str, float]:
    """Single primitives on this machine (median microseconds), for the table."""
    signer = Ed25519PrivateKey.generate()
    message = os.urandom(1400)
    signature = signer.sign(message)
    public = signer.public_key()
    peer = X25519PrivateKey.generate().public_key()
    mine = X25519PrivateKey.generate()
    cek = AESGCM(os.urandom(32))
    kib = os.urandom(1024)
    return {
        "ed25519_sign_1400B_us": _primitive_us(lambda: signer.sign(message)),
        "ed25519_verify_1400B_us": _primitive_us(lambda: public.verify(signature, message)),
        "x25519_generate_us": _primitive_us(X25519PrivateKey.generate),
        "x25519_exchange_us": _primitive_us(lambda: mine.exchange(peer)),
        "aes256gcm_encrypt_1KiB_us": _primitive_us(lambda: cek.encrypt(b"\0" * 12, kib, None)),
    }


def measure(payload: int, *, batches: int, per_batch: int) -> dict[str, Any]:
    """Scenario F for bodies of ``payload`` bytes: project and floor, per exchange."""
    crypto = ExchangeCrypto(payload)
    timings: dict[str, list[float]] = {}
    crypto.exchange(timings)  # fills the message sizes
    project = _per_exchange(crypto.exchange, batches, per_batch)
    calls: dict[str, list[float]] = {}
    for _ in range(max(5, min(per_batch, 200))):
        crypto.exchange(calls)
    floor = Floor(crypto.sizes)
    floor_result = _per_exchange(floor.exchange, batches, per_batch)
    with_token_verify = _per_exchange(floor.exchange_with_token_verify, batches, per_batch)
    return {
        "payload_bytes": payload,
        "operations": {"sign": 2, "verify": 2, "jwe_seal": 2, "jwe_open": 2},
        "message_bytes": crypto.sizes,
        "project": {
            **project,
            "calls_us_median": {
                name: round(statistics.median(took) * 1e6, 1) for name, took in calls.items()
            },
        },
        "floor": floor_result,
        "floor_with_token_verify": with_token_verify,
        "project_over_floor": round(
            project["cpu_us_per_exchange"] / floor_result["cpu_us_per_exchange"], 3
        ),
    }

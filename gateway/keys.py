"""Agency keys: generation, PEM files, JWKs, RFC 7638 thumbprints, key rings.

Each agency holds a signing key (Ed25519 by default, or ECDSA P-256) and an
encryption key (X25519, or ECDH P-256). The algorithm of a key is fixed by
the key itself (protocol section 2), never taken from a message header.
A ``kid`` is always the key's RFC 7638 SHA-256 thumbprint.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gateway.errors import SetupError

SIG_ALG_ED25519 = "EdDSA"
SIG_ALG_ES256 = "ES256"
ENC_ALG = "ECDH-ES+A256KW"
ENC_ENC = "A256GCM"

KeyAlgorithm = Literal["ed25519", "p256"]
KeyUse = Literal["sig", "enc"]
PublicKeyObject = Ed25519PublicKey | X25519PublicKey | ec.EllipticCurvePublicKey
PrivateKeyObject = Ed25519PrivateKey | X25519PrivateKey | ec.EllipticCurvePrivateKey

SIGNING_FILE = "signing.pem"
ENCRYPTION_FILE = "encryption.pem"
JWKS_FILE = "jwks.json"
# The audit log's checkpoint key: always Ed25519 (C2SP signed notes), never used for messages.
LOG_KEY_FILE = "log.pem"

# A JWKS larger than this is refused before parsing: no agency needs hundreds of keys.
MAX_JWKS_KEYS = 32


_STANDARD_TO_B64URL: Final = bytes.maketrans(b"+/", b"-_")


def b64url_ascii(data: bytes | bytearray | memoryview) -> bytes:
    """:func:`b64url` as ASCII bytes (for building compact serializations)."""
    # One translation both maps the alphabet and drops the padding: a large
    # value is copied once before its text, not twice as with
    # urlsafe_b64encode and rstrip.
    return binascii.b2a_base64(data, newline=False).translate(_STANDARD_TO_B64URL, b"=")


def b64url(data: bytes | bytearray | memoryview) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return b64url_ascii(data).decode("ascii")


_B64URL_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
# The value of each base64url character's byte, for the spare low bits of a last one.
_B64URL_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUE: Final = {char: value for value, char in enumerate(_B64URL_ALPHABET)}


def b64url_decode(text: str | bytes | bytearray) -> bytes:
    """Strict base64url without padding; raises ``ValueError`` on anything else.

    Only the canonical encoding is accepted: the URL-safe alphabet and
    nothing else (the standard library's default skips other characters),
    no padding, and zero spare bits in the last character. ``text`` may be
    the ASCII bytes of a compact serialization, read as they are.
    """
    if isinstance(text, str):
        if not text.isascii():
            raise ValueError("not unpadded base64url")
        text = text.encode("ascii")
    elif not isinstance(text, bytes | bytearray) or not text.isascii():
        raise ValueError("not unpadded base64url")
    if b"+" in text or b"/" in text or b"=" in text:
        raise ValueError("not unpadded base64url")
    spare = len(text) % 4
    if spare == 1:
        raise ValueError("not base64url: impossible length")
    # 2 characters carry 1 byte (4 spare bits), 3 carry 2 bytes (2 spare bits).
    if spare and _B64URL_VALUE.get(text[-1], 0) & (0b1111 if spare == 2 else 0b11):
        raise ValueError("not canonical base64url")
    try:
        # strict_mode refuses every character outside the alphabet. One
        # expression: the translated copy is the only one made.
        return binascii.a2b_base64(
            text.translate(_B64URL_TO_STANDARD) + b"=" * (-spare % 4), strict_mode=True
        )
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    kty = jwk.get("kty")
    members: tuple[str, ...]
    if kty == "OKP":
        members = ("crv", "kty", "x")
    elif kty == "EC":
        members = ("crv", "kty", "x", "y")
    else:
        raise ValueError(f"unsupported kty {kty!r}")
    missing = [name for name in members if not isinstance(jwk.get(name), str)]
    if missing:
        raise ValueError(f"JWK member {missing[0]!r} missing")
    required = {name: jwk[name] for name in members}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public_jwk_members(key: PublicKeyObject) -> dict[str, str]:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if isinstance(key, Ed25519PublicKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(key.public_bytes(*raw))}
    if isinstance(key, X25519PublicKey):
        return {"kty": "OKP", "crv": "X25519", "x": b64url(key.public_bytes(*raw))}
    if isinstance(key.curve, ec.SECP256R1):
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
    raise ValueError("only P-256 EC keys are supported")


def _alg_for(key: PublicKeyObject, use: KeyUse) -> str:
    if use == "enc":
        if isinstance(key, Ed25519PublicKey):
            raise ValueError("an Ed25519 key cannot encrypt")
        return ENC_ALG
    if isinstance(key, X25519PublicKey):
        raise ValueError("an X25519 key cannot sign")
    return SIG_ALG_ED25519 if isinstance(key, Ed25519PublicKey) else SIG_ALG_ES256


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key with its fixed ``use`` and ``alg``."""

    key: PublicKeyObject
    use: KeyUse
    kid: str = field(init=False)
    alg: str = field(init=False)
    jwk: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = _public_jwk_members(self.key)
        alg = _alg_for(self.key, self.use)
        kid = thumbprint(members)
        object.__setattr__(self, "kid", kid)
        object.__setattr__(self, "alg", alg)
        object.__setattr__(self, "jwk", {**members, "kid": kid, "use": self.use, "alg": alg})

    def accepts_alg(self, alg: str) -> bool:
        """True when ``alg`` names this key's algorithm (``Ed25519`` too, RFC 9864)."""
        return alg == self.alg or (self.alg == SIG_ALG_ED25519 and alg == "Ed25519")

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PublicKey:
        """Parse and check one public JWK; ``ValueError`` names what is wrong.

        The ``kid`` must be the RFC 7638 thumbprint and ``use``/``alg`` must
        match the key type, so a JWKS cannot relabel a key for another job.
        """
        if not isinstance(jwk, Mapping):
            raise ValueError("a JWK must be a JSON object")
        if "d" in jwk:
            raise ValueError("a public JWK must not contain a private part ('d')")
        use = jwk.get("use")
        if use not in ("sig", "enc"):
            raise ValueError("'use' must be 'sig' or 'enc'")
        key = _key_from_members(jwk)
        public = cls(key=key, use=use)
        if jwk.get("kid") != public.kid:
            raise ValueError("'kid' is not the key's RFC 7638 thumbprint")
        if jwk.get("alg") != public.alg:
            raise ValueError(f"'alg' must be {public.alg!r} for this key")
        return public


def _coordinate(jwk: Mapping[str, Any], name: str, size: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"'{name}' is missing")
    raw = b64url_decode(value)
    if len(raw) != size:
        raise ValueError(f"'{name}' must be {size} bytes")
    return raw


def _key_from_members(jwk: Mapping[str, Any]) -> PublicKeyObject:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    try:
        if kty == "OKP" and crv == "Ed25519":
            return Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x", 32))
        if kty == "OKP" and crv == "X25519":
            return X25519PublicKey.from_public_bytes(_coordinate(jwk, "x", 32))
        if kty == "EC" and crv == "P-256":
            point = b"\x04" + _coordinate(jwk, "x", 32) + _coordinate(jwk, "y", 32)
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a valid {crv} public key: {exc}") from exc
    raise ValueError(f"unsupported key type kty={kty!r} crv={crv!r}")


def parse_jwks(document: Any) -> tuple[PublicKey, ...]:
    """Parse a JWKS object (``{"keys": [...]}``) into checked public keys, in order."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS must be an object with a 'keys' array")
    entries = document["keys"]
    if not entries or len(entries) > MAX_JWKS_KEYS:
        raise ValueError(f"a JWKS must hold 1 to {MAX_JWKS_KEYS} keys")
    keys = []
    for position, entry in enumerate(entries):
        try:
            keys.append(PublicKey.from_jwk(entry))
        except ValueError as exc:
            raise ValueError(f"keys[{position}]: {exc}") from exc
    return tuple(keys)


def jwks_document(keys: Iterable[PublicKey]) -> dict[str, list[dict[str, str]]]:
    """The JWKS JSON object for ``keys``, in preference order."""
    return {"keys": [dict(key.jwk) for key in keys]}


@dataclass(frozen=True)
class PrivateKey:
    """One of our own private keys, with its public half and fixed algorithm."""

    key: PrivateKeyObject
    use: KeyUse
    public: PublicKey = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", PublicKey(key=self.key.public_key(), use=self.use))

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the public half."""
        return self.public.kid

    @property
    def alg(self) -> str:
        """The JOSE algorithm this key is fixed to."""
        return self.public.alg


@dataclass(frozen=True)
class AgencyKeys:
    """Our own key ring: the active keys and older encryption keys still accepted.

    The active signing key signs and the active encryption key is published
    first; every key in ``decryption`` decrypts (rotation overlap).
    """

    signing: PrivateKey
    encryption: PrivateKey
    previous: tuple[PrivateKey, ...] = ()

    @property
    def decryption(self) -> tuple[PrivateKey, ...]:
        """Every encryption key we still decrypt with, the active one first."""
        return (self.encryption, *(k for k in self.previous if k.use == "enc"))

    def public_keys(self) -> tuple[PublicKey, ...]:
        """Our public keys in preference order, as published in ``jwks.json``."""
        return (
            self.signing.public,
            self.encryption.public,
            *(key.public for key in self.previous),
        )


def generate_private_keys(alg: KeyAlgorithm = "ed25519") -> tuple[PrivateKey, PrivateKey]:
    """Fresh (signing, encryption) private keys: Ed25519/X25519 or P-256/P-256."""
    if alg == "ed25519":
        return (
            PrivateKey(Ed25519PrivateKey.generate(), "sig"),
            PrivateKey(X25519PrivateKey.generate(), "enc"),
        )
    if alg == "p256":
        return (
            PrivateKey(ec.generate_private_key(ec.SECP256R1()), "sig"),
            PrivateKey(ec.generate_private_key(ec.SECP256R1()), "enc"),
        )
    raise ValueError(f"unknown key algorithm {alg!r}: use 'ed25519' or 'p256'")


def private_key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted (best available) when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file created with mode 0600 (never world-readable)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never overwrite a key, never follow a link planted at its path.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SetupError(str(path), "refusing to overwrite an existing file") from exc
    except OSError as exc:
        raise SetupError(str(path), f"cannot create the key file ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_key_dir(
    directory: Path,
    alg: KeyAlgorithm = "ed25519",
    passphrase: bytes | None = None,
    *,
    log_key: bool = True,
) -> AgencyKeys:
    """Generate an agency's keys into ``directory``: two PEMs, ``jwks.json`` and the log key."""
    signing, encryption = generate_private_keys(alg)
    write_private_file(directory / SIGNING_FILE, private_key_pem(signing, passphrase))
    write_private_file(directory / ENCRYPTION_FILE, private_key_pem(encryption, passphrase))
    if log_key:
        write_log_key(directory / LOG_KEY_FILE, passphrase)
    keys = AgencyKeys(signing=signing, encryption=encryption)
    jwks = json.dumps(jwks_document(keys.public_keys()), indent=2) + "\n"
    (directory / JWKS_FILE).write_text(jwks, encoding="utf-8")
    return keys


def load_private_key(path: Path, use: KeyUse, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PKCS#8 PEM private key for ``use``; ``SetupError`` says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SetupError(str(path), f"cannot read key file ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        reason = (
            "the key is encrypted: configure its passphrase"
            if passphrase is None
            else "the key is not encrypted but a passphrase was given"
        )
        raise SetupError(str(path), reason) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SetupError(str(path), "not a PKCS#8 PEM private key, or wrong passphrase") from exc
    if not isinstance(key, Ed25519PrivateKey | X25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise SetupError(str(path), "unsupported key type: use Ed25519, X25519 or P-256")
    try:
        return PrivateKey(key, use)
    except ValueError as exc:
        raise SetupError(str(path), f"a {use} key cannot be of this type: {exc}") from exc


def write_log_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Generate the audit log's Ed25519 checkpoint key into ``path`` (PKCS#8 PEM, 0600)."""
    key = Ed25519PrivateKey.generate()
    write_private_file(path, private_key_pem(PrivateKey(key, "sig"), passphrase))
    return key


def load_log_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load the audit log's checkpoint key; ``SetupError`` unless it is an Ed25519 key."""
    key = load_private_key(path, "sig", passphrase).key
    if not isinstance(key, Ed25519PrivateKey):
        raise SetupError(str(path), "the audit log key must be Ed25519 (C2SP signed notes)")
    return key


def load_agency_keys(
    directory: Path,
    passphrase: bytes | None = None,
    previous_dirs: Sequence[Path] = (),
) -> AgencyKeys:
    """Load our key ring from ``directory`` (and older encryption keys from ``previous_dirs``)."""
    previous = tuple(
        load_private_key(old / ENCRYPTION_FILE, "enc", passphrase) for old in previous_dirs
    )
    return AgencyKeys(
        signing=load_private_key(directory / SIGNING_FILE, "sig", passphrase),
        encryption=load_private_key(directory / ENCRYPTION_FILE, "enc", passphrase),
        previous=previous,
    )


def load_public_key_file(path: Path, use: KeyUse = "sig") -> tuple[PublicKey, ...]:
    """Load trusted public keys of ``use`` from a JWKS file or a public-key PEM."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SetupError(str(path), f"cannot read key file ({exc.strerror})") from exc
    try:
        if data.lstrip().startswith(b"{"):
            keys = tuple(key for key in parse_jwks(json.loads(data)) if key.use == use)
        else:
            loaded = serialization.load_pem_public_key(data)
            if not isinstance(
                loaded, Ed25519PublicKey | X25519PublicKey | ec.EllipticCurvePublicKey
            ):
                raise ValueError("unsupported key type: use Ed25519, X25519 or P-256")
            keys = (PublicKey(loaded, use),)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SetupError(str(path), f"not a usable public key: {exc}") from exc
    if not keys:
        raise SetupError(str(path), f"holds no key with use {use!r}")
    return keys

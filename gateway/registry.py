"""The signed trust registry (protocol section 2): build, sign, verify, hold.

The registry authority writes a YAML source naming each agency and its JWKS
file; :func:`build_registry_payload` and :func:`sign_registry` turn it into a
compact JWS (``typ`` ``registry+jwt``). Gateways check it with the pure
:func:`verify_registry` and query the resulting :class:`Registry`.
:class:`RegistryHolder` is the only part that touches the file system at run
time: it re-reads the registry file when it changes and keeps the last good
registry when the new one is refused.

Serial rule: a registry with a lower ``serial`` than the one held is refused;
one with an equal serial is accepted only when its signed payload is byte for
byte the one held (a re-signature or a touched file), so the authority must
raise the serial for any change of content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.errors import JoseError, SetupError
from gateway.jose import (
    CLOCK_SKEW_SECONDS,
    claim_type_problem,
    parse_jws,
    sign_jwt,
    strict_json_object,
)
from gateway.keys import PrivateKey, PublicKey, jwks_document, parse_jwks
from gateway.yamlfiles import load_strict_yaml, yaml_problem

REGISTRY_TYP: Final = "registry+jwt"
DEFAULT_ISS: Final = "registry-authority"

# A registry of a few hundred agencies is well under 1 MiB; anything above
# this is refused before parsing so a bad file cannot exhaust memory.
MAX_REGISTRY_BYTES: Final = 4 * 1024 * 1024
# MAX_JWKS_KEYS (32) keys of a few hundred bytes each fit easily.
MAX_JWKS_FILE_BYTES: Final = 256 * 1024

AGENCY_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{1,62}$"
AgencyStatus = Literal["active", "suspended", "revoked"]

_CLAIMS: Final = {"iss": str, "iat": int, "exp": int, "serial": int, "agencies": list}


class RegistryError(SetupError):
    """The registry (or its file) was refused; the last good one stays in force."""

    def __init__(self, reason: str, *, field: str | None = None, source: str = "registry") -> None:
        super().__init__(source, reason, field=field)


class _Problem(Exception):
    """An invalid member, translated to SetupError or RegistryError by the caller."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def normalize_gateway_url(value: str) -> str:
    """Check an http(s) gateway URL with a host and no query or fragment; drop a final ``/``."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - urlsplit only checks the port when asked
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http or https URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials")
    if "?" in value or "#" in value:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


class _AgencyFields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: Annotated[str, Field(pattern=AGENCY_ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    gateway_url: Annotated[str, Field(max_length=2048)]
    status: AgencyStatus

    @field_validator("gateway_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return normalize_gateway_url(value)


class _SourceAgency(_AgencyFields):
    jwks: Annotated[str, Field(min_length=1)]


class _WireAgency(_AgencyFields):
    jwks: dict[str, Any]


class _Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    iss: Annotated[str, Field(min_length=1, max_length=200)] = DEFAULT_ISS
    serial: Annotated[int, Field(ge=0)]
    valid_days: Annotated[int, Field(ge=1, le=366)] = 30
    agencies: list[_SourceAgency]


@dataclass(frozen=True)
class AgencyEntry:
    """One agency as the registry lists it; its keys in preference order."""

    id: str
    name: str
    gateway_url: str
    status: AgencyStatus
    keys: tuple[PublicKey, ...]


@dataclass(frozen=True)
class Registry:
    """A verified registry with lookups prepared once.

    Only ``active`` agencies have trusted keys or a usable gateway URL; a key
    is trusted only for the agency that lists it. ``payload_digest`` is the
    SHA-256 of the signed payload, used by the equal-serial rule.
    """

    iss: str
    iat: int
    exp: int
    serial: int
    agencies: Mapping[str, AgencyEntry]
    payload_digest: bytes = field(default=b"", repr=False)
    _signing: Mapping[str, Mapping[str, PublicKey]] = field(init=False, repr=False, compare=False)
    _encryption: Mapping[str, PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        agencies = MappingProxyType(dict(self.agencies))
        active = {name: entry for name, entry in agencies.items() if entry.status == "active"}
        signing = {
            name: {key.kid: key for key in entry.keys if key.use == "sig"}
            for name, entry in active.items()
        }
        encryption = {
            name: next(key for key in entry.keys if key.use == "enc")
            for name, entry in active.items()
            if any(key.use == "enc" for key in entry.keys)
        }
        object.__setattr__(self, "agencies", agencies)
        object.__setattr__(self, "_signing", signing)
        object.__setattr__(self, "_encryption", encryption)

    def agency(self, agency_id: str) -> AgencyEntry | None:
        """The entry for ``agency_id`` whatever its status, or None if not listed."""
        return self.agencies.get(agency_id)

    def is_active(self, agency_id: str) -> bool:
        """True when ``agency_id`` is listed with status ``active``."""
        return agency_id in self._signing

    def signing_key(self, agency_id: str, kid: str) -> PublicKey | None:
        """The ``sig`` key ``kid`` if the active agency ``agency_id`` lists it."""
        return self._signing.get(agency_id, {}).get(kid)

    def signing_keys(self, agency_id: str) -> tuple[PublicKey, ...]:
        """Every ``sig`` key of an active agency, in listed order (empty otherwise)."""
        return tuple(self._signing.get(agency_id, {}).values())

    def encryption_key(self, agency_id: str) -> PublicKey | None:
        """The first ``enc`` key listed for an active agency: the one to encrypt to."""
        return self._encryption.get(agency_id)

    def gateway_url(self, agency_id: str) -> str | None:
        """Where an active agency's gateway is; None for unknown or inactive agencies."""
        return self.agencies[agency_id].gateway_url if self.is_active(agency_id) else None


def _pydantic_problem(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> _Problem:
    error = exc.errors(include_url=False)[0]
    parts = (f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*prefix, *error["loc"]))
    return _Problem("".join(parts).lstrip(".") or None, error["msg"].removeprefix("Value error, "))


def _agency_entries(
    agencies: Sequence[tuple[_AgencyFields, tuple[PublicKey, ...]]],
) -> dict[str, AgencyEntry]:
    entries: dict[str, AgencyEntry] = {}
    owners: dict[str, str] = {}
    for position, (agency, keys) in enumerate(agencies):
        where = f"agencies[{position}]"
        if agency.id in entries:
            raise _Problem(f"{where}.id", f"duplicate agency id {agency.id!r}")
        # Every agency signs and is encrypted to (protocol section 2).
        if {key.use for key in keys} != {"sig", "enc"}:
            raise _Problem(f"{where}.jwks", "must list at least one 'sig' and one 'enc' key")
        for key in keys:
            # A key listed twice would be trusted for two agencies: its holder
            # could then speak as either.
            if key.kid in owners:
                raise _Problem(
                    f"{where}.jwks", f"key {key.kid} is also listed by {owners[key.kid]!r}"
                )
            owners[key.kid] = agency.id
        entries[agency.id] = AgencyEntry(
            agency.id, agency.name, agency.gateway_url, agency.status, keys
        )
    return entries


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _Problem(None, f"cannot read {path} ({exc.strerror})") from exc
    if len(data) > limit:
        raise _Problem(None, f"{path} is larger than {limit} bytes")
    return data


def _load_source(path: Path) -> _Source:
    data = _read_bounded(path, MAX_REGISTRY_BYTES)
    try:
        document = load_strict_yaml(data)
    except yaml.YAMLError as exc:
        raise _Problem(None, yaml_problem(exc)) from exc
    if not isinstance(document, dict):
        raise _Problem(None, "must be a YAML mapping")
    try:
        return _Source.model_validate(document)
    except ValidationError as exc:
        raise _pydantic_problem(exc) from exc


def _read_jwks(path: Path, where: str) -> tuple[PublicKey, ...]:
    try:
        return parse_jwks(strict_json_object(_read_bounded(path, MAX_JWKS_FILE_BYTES)))
    except _Problem as exc:
        raise _Problem(where, exc.reason) from exc
    except (JoseError, ValueError) as exc:
        raise _Problem(where, f"{path}: {exc}") from exc


def build_registry_payload(source_path: Path, now: int) -> dict[str, Any]:
    """The registry claims for the YAML source at ``source_path``, issued at ``now``.

    JWKS paths are relative to the source's folder. Every problem raises
    :class:`SetupError` naming the source file, the field and the reason.
    """
    try:
        source = _load_source(source_path)
        pairs = [
            (agency, _read_jwks(source_path.parent / agency.jwks, f"agencies[{i}].jwks"))
            for i, agency in enumerate(source.agencies)
        ]
        _agency_entries(pairs)
    except _Problem as exc:
        raise SetupError(str(source_path), exc.reason, field=exc.field) from exc
    return {
        "iss": source.iss,
        "iat": now,
        "exp": now + source.valid_days * 86400,
        "serial": source.serial,
        # JWKS re-serialised from the checked keys so only standard members are signed.
        "agencies": [
            {**agency.model_dump(exclude={"jwks"}), "jwks": jwks_document(keys)}
            for agency, keys in pairs
        ],
    }


def sign_registry(payload: Mapping[str, Any], authority: PrivateKey) -> str:
    """The compact JWS (``typ`` ``registry+jwt``) of ``payload``, signed by ``authority``."""
    if authority.use != "sig":
        raise SetupError("registry authority key", "must be a signing key")
    return sign_jwt(payload, authority, REGISTRY_TYP)


def _wire_agencies(raw: list[Any]) -> dict[str, AgencyEntry]:
    pairs: list[tuple[_AgencyFields, tuple[PublicKey, ...]]] = []
    for position, item in enumerate(raw):
        try:
            agency = _WireAgency.model_validate(item)
        except ValidationError as exc:
            raise _pydantic_problem(exc, ("agencies", position)) from exc
        try:
            keys = parse_jwks(agency.jwks)
        except ValueError as exc:
            raise _Problem(f"agencies[{position}].jwks", str(exc)) from exc
        pairs.append((agency, keys))
    return _agency_entries(pairs)


def _verify(
    compact: str,
    authority_keys: Sequence[PublicKey],
    now: int,
    min_serial: int | None,
    current: Registry | None,
) -> Registry:
    if len(compact) > MAX_REGISTRY_BYTES:
        raise _Problem(None, f"larger than {MAX_REGISTRY_BYTES} bytes")
    try:
        jws = parse_jws(compact, REGISTRY_TYP)
        key = next((k for k in authority_keys if k.kid == jws.kid and k.use == "sig"), None)
        if key is None:
            raise _Problem(None, "not signed by a configured authority key")
        jws.verify(key)
        claims = jws.claims()
    except JoseError as exc:
        raise _Problem(None, f"refused: {exc}") from exc
    problem = claim_type_problem(claims, _CLAIMS)
    if problem is not None:
        raise _Problem(None, problem)
    unknown = sorted(set(claims) - set(_CLAIMS))
    if unknown:
        # Every member is security-relevant: one we do not know means a format we do not speak.
        raise _Problem(unknown[0], "unknown claim")
    iat, exp, serial = claims["iat"], claims["exp"], claims["serial"]
    if iat > now + CLOCK_SKEW_SECONDS:
        raise _Problem("iat", "issued in the future")
    if exp <= iat:
        raise _Problem("exp", "must be after iat")
    if exp <= now:
        raise _Problem("exp", "the registry has expired")
    if serial < 0:
        raise _Problem("serial", "must not be negative")
    if min_serial is not None and serial < min_serial:
        raise _Problem("serial", f"{serial} is lower than {min_serial}")
    digest = hashlib.sha256(jws.payload).digest()
    if current is not None:
        if serial < current.serial:
            raise _Problem("serial", f"{serial} is lower than the held {current.serial}")
        if serial == current.serial and digest != current.payload_digest:
            raise _Problem("serial", f"{serial} is already held with other content")
    agencies = _wire_agencies(claims["agencies"])
    return Registry(claims["iss"], iat, exp, serial, agencies, payload_digest=digest)


def verify_registry(
    compact: str,
    authority_keys: Sequence[PublicKey],
    now: int,
    min_serial: int | None = None,
    *,
    current: Registry | None = None,
) -> Registry:
    """Verify a compact registry JWS at ``now`` and return the checked registry.

    Refused (:class:`RegistryError`): a bad header (3.0), a signature that is
    not by one of ``authority_keys``, wrongly typed or unknown claims,
    ``iat`` beyond ``now`` + 30 s, ``exp`` not after ``iat`` or not after
    ``now``, a ``serial`` below ``min_serial``, an invalid agency entry. With
    ``current``, the serial rule of the module docstring applies too.
    """
    try:
        return _verify(compact, authority_keys, now, min_serial, current)
    except _Problem as exc:
        raise RegistryError(exc.reason, field=exc.field) from exc


@dataclass(frozen=True)
class ReloadResult:
    """What :meth:`RegistryHolder.maybe_reload` did, and the serial now in force."""

    outcome: Literal["unchanged", "reloaded", "failed"]
    serial: int
    error: str | None = None


@dataclass(frozen=True)
class RegistryCheck:
    """What :meth:`RegistryHolder.check` found, to be put in force by its ``apply``.

    ``based_on`` is the registry held when the file was checked; ``stamp``
    the file's (mtime, size), taken before reading it; ``found`` the
    verified new registry, the error that refused the file, or None when
    the file had not changed (and was not read).
    """

    based_on: Registry
    stamp: tuple[int, int] | None
    found: Registry | RegistryError | None


class RegistryHolder:
    """The registry in force, re-read from ``path`` when the file changes.

    No threads or timers of its own: the server polls. A poll is two steps
    so that the file work can leave the event loop: :meth:`check` reads,
    parses and verifies and changes nothing (it may run in a worker thread),
    :meth:`apply` is the one place the holder changes (run it where
    :attr:`current` is read). :meth:`maybe_reload` does both. A refused file
    never replaces the registry in force; ``last_error`` says why (cleared by
    the next success) and ``reload_failures`` counts refusals. A refused file
    is not re-read until it changes (or ``force``). An expired registry stays
    in force until replaced: callers watch :meth:`expires_in`.
    """

    def __init__(
        self, path: Path, authority_keys: Sequence[PublicKey], *, min_serial: int | None = None
    ) -> None:
        self._path = path
        self._authority_keys = tuple(authority_keys)
        self._min_serial = min_serial
        self._current: Registry | None = None
        self._stamp: tuple[int, int] | None = None
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.reload_failures = 0

    @property
    def current(self) -> Registry:
        """The registry in force; :class:`RegistryError` before a successful :meth:`load`."""
        if self._current is None:
            raise RegistryError("no registry loaded yet", source=str(self._path))
        return self._current

    def expires_in(self, now: int) -> int:
        """Seconds until the registry in force expires (negative once expired)."""
        return self.current.exp - now

    def load(self, now: int) -> Registry:
        """Read and verify the file at start-up; :class:`RegistryError` if refused."""
        # Taken before reading, so a write racing the read shows as a change next time.
        self._stamp = self._file_stamp()
        try:
            registry = self._read(now)
        except RegistryError as exc:
            self._record_failure(exc)
            raise
        self._install(registry, now)
        return registry

    def maybe_reload(self, now: int, *, force: bool = False) -> ReloadResult:
        """Re-read the file if its (mtime, size) changed; keep the last good registry on failure."""
        return self.apply(self.check(now, force=force), now)

    def check(self, now: int, *, force: bool = False) -> RegistryCheck:
        """Read and verify the file if its (mtime, size) changed, changing nothing here.

        Safe in a worker thread while :attr:`current` is read elsewhere, as
        long as no :meth:`apply` runs meanwhile (the caller runs one poll at
        a time).
        """
        held = self.current
        # Taken before reading, so a write racing the read shows as a change next time.
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return RegistryCheck(held, stamp, None)
        try:
            return RegistryCheck(held, stamp, self._read(now, held))
        except RegistryError as exc:
            return RegistryCheck(held, stamp, exc)

    def apply(self, check: RegistryCheck, now: int) -> ReloadResult:
        """Put what :meth:`check` found in force (or count its refusal): the one place of change.

        A check made before another one was applied is stale and is dropped
        (outcome ``unchanged``): the file is checked again at the next poll.
        """
        held = self.current
        found = check.found
        if check.based_on is not held or found is None:
            return ReloadResult("unchanged", held.serial)
        self._stamp = check.stamp
        if isinstance(found, RegistryError):
            self._record_failure(found)
            return ReloadResult("failed", held.serial, str(found))
        self._install(found, now)
        same = found.payload_digest == held.payload_digest
        return ReloadResult("unchanged" if same else "reloaded", found.serial)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            info = self._path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def _read(self, now: int, held: Registry | None = None) -> Registry:
        try:
            data = _read_bounded(self._path, MAX_REGISTRY_BYTES)
            text = data.decode("ascii").strip()
        except _Problem as exc:
            raise RegistryError(exc.reason, source=str(self._path)) from exc
        except UnicodeDecodeError as exc:
            raise RegistryError(
                "not a compact JWS (non-ASCII bytes)", source=str(self._path)
            ) from exc
        return verify_registry(text, self._authority_keys, now, self._min_serial, current=held)

    def _record_failure(self, exc: RegistryError) -> None:
        self.last_error = str(exc)
        self.reload_failures += 1

    def _install(self, registry: Registry, now: int) -> None:
        self._current = registry
        self.last_error = None
        self.last_success = float(now)

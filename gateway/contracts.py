"""Data-sharing contracts: model, canonical form, signatures, decisions (protocol section 4).

A contract is a YAML file signed by both parties with detached JWS over the
RFC 8785 canonical JSON of the validated model (``signatures`` excluded).
The model and every decision are pure and take ``now`` as unix seconds; the
only I/O is reading contract files (:func:`check_contract_file`,
:func:`load_contract_file`, :func:`load_contract_dir`, and
:class:`ContractDirLoader`, which a running gateway keeps so that a reload
parses and verifies only the files that changed).

A :class:`ContractSet` from :func:`load_contract_dir` holds only contracts
whose signatures verified; a :class:`Contract` obtained any other way is
unverified until :func:`verify_signatures` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Self

import rfc8785
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway.errors import JoseError, SetupError
from gateway.fields import FIELD_PATH_PATTERN, MAX_PATH_LENGTH, FieldFilter, parse_field_path
from gateway.jose import MAX_COMPACT_BYTES, attach_payload, detached_signature, parse_jws
from gateway.keys import PrivateKey, PublicKey
from gateway.yamlfiles import load_strict_yaml, yaml_problem

ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{1,62}$"
CONTRACT_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{1,127}$"
SUBJECT_FIELD_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
CONTRACT_JWS_TYP: Final = "contract+jws"

# A contract is a page of YAML; anything larger is refused before parsing.
MAX_CONTRACT_FILE_BYTES: Final = 1024 * 1024
# Bounds on lists so that a contract stays cheap to check on every request.
MAX_PURPOSES: Final = 32
MAX_FIELDS: Final = 256
# A detached Ed25519 or ES256 compact JWS is well under 1 KiB.
MAX_JWS_LENGTH: Final = 2048
# RFC 8785 numbers are IEEE doubles: larger integers would not survive canonicalisation.
MAX_SAFE_INTEGER: Final = 2**53 - 1

# The trust registry's view of signing keys: an agency's, or none for an agency it does not trust.
SigningKeysOf = Callable[[str], Sequence[PublicKey]]

_UTC_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"


def _utc_instant(value: object) -> datetime:
    # YAML turns an unquoted timestamp into a datetime; a quoted one stays text.
    if isinstance(value, str) and re.fullmatch(_UTC_PATTERN, value):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ValueError("must be a UTC date-time written like 2026-01-01T00:00:00Z")
    # One spelling per instant, so every party computes the same canonical bytes.
    if value.utcoffset() != timedelta(0):
        raise ValueError("must be in UTC, written with the suffix Z")
    if value.microsecond:
        raise ValueError("must be whole seconds")
    return value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _as_tuple(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ValueError("must be a list")


def _field_path(value: str) -> str:
    parse_field_path(value)
    return value


def _utf8(value: str) -> str:
    value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return value


# Text that many contracts repeat (agency ids, purposes and their legal basis, field
# paths) is kept once: each of 10,000 contracts would otherwise hold its own copies.
_ONE_COPY: Final = AfterValidator(sys.intern)

AgencyId = Annotated[str, StringConstraints(pattern=ID_PATTERN), _ONE_COPY]
UtcInstant = Annotated[
    datetime,
    BeforeValidator(_utc_instant),
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": _UTC_PATTERN}),
]
FieldPath = Annotated[
    str,
    AfterValidator(_field_path),
    _ONE_COPY,
    WithJsonSchema({"type": "string", "pattern": FIELD_PATH_PATTERN, "maxLength": MAX_PATH_LENGTH}),
]
ContractStatus = Literal["active", "suspended", "revoked"]


# One set object for each combination of field names given, shared by every model
# instance given that combination (see _Strict._share_fields_set).
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="after")
    def _share_fields_set(self) -> Self:
        # Pydantic gives every instance its own set of the field names it was given:
        # a contract's five models spend about 1.5 KB on them, 15 MB at 10,000
        # contracts, though nearly all name the same fields. A frozen model never
        # changes its set (model_copy copies it first), so one set can serve them all.
        names = self.__pydantic_fields_set__
        object.__setattr__(
            self, "__pydantic_fields_set__", _FIELDS_SETS.setdefault(frozenset(names), names)
        )
        return self


class Purpose(_Strict):
    """A purpose the consumer may ask for, with the law that allows it."""

    id: AgencyId = Field(description="Purpose id, sent as X-Purpose and in tokens.")
    legal_basis: Annotated[
        str,
        StringConstraints(min_length=1, max_length=1000, pattern=r"\S"),
        AfterValidator(_utf8),
        _ONE_COPY,
    ] = Field(description="The legal basis, recorded in the audit log.")


class RateLimit(_Strict):
    """A token bucket: capacity ``requests``, refilled at ``requests``/``per_seconds``."""

    requests: int = Field(ge=1, le=1_000_000)
    per_seconds: int = Field(ge=1, le=366 * 86_400)


class ContractSignature(_Strict):
    """One party's detached compact JWS over the canonical contract."""

    agency: AgencyId
    jws: str = Field(min_length=1, max_length=MAX_JWS_LENGTH)


class Contract(_Strict):
    """A data-sharing contract between one provider and one consumer for one service."""

    id: str = Field(pattern=CONTRACT_ID_PATTERN)
    version: int = Field(ge=1, le=MAX_SAFE_INTEGER, description="Raised for every change.")
    provider: AgencyId
    consumer: AgencyId
    service: AgencyId
    purposes: Annotated[
        tuple[Purpose, ...],
        Field(min_length=1, max_length=MAX_PURPOSES),
        BeforeValidator(_as_tuple),
    ]
    fields: Annotated[
        tuple[FieldPath, ...],
        Field(min_length=1, max_length=MAX_FIELDS),
        BeforeValidator(_as_tuple),
    ] = Field(description="Response field paths released; everything else is removed.")
    subject_field: Annotated[str, _ONE_COPY] = Field(
        pattern=SUBJECT_FIELD_PATTERN,
        description="Top-level request body member naming the data subject.",
    )
    requires_end_user: bool = True
    valid_from: UtcInstant
    valid_until: UtcInstant
    rate_limit: RateLimit = RateLimit(requests=60, per_seconds=60)
    max_request_bytes: int = Field(default=65_536, ge=1, le=MAX_COMPACT_BYTES)
    retention_days: int = Field(ge=1, le=36_500, description="The consumer's retention duty.")
    status: ContractStatus = "active"
    signatures: Annotated[
        tuple[ContractSignature, ...], Field(max_length=2), BeforeValidator(_as_tuple)
    ] = ()

    @field_validator("consumer")
    @classmethod
    def _not_the_provider(cls, consumer: str, info: ValidationInfo) -> str:
        if consumer == info.data.get("provider"):
            raise ValueError("must differ from provider")
        return consumer

    @field_validator("purposes")
    @classmethod
    def _unique_purposes(cls, purposes: tuple[Purpose, ...]) -> tuple[Purpose, ...]:
        _refuse_duplicates([purpose.id for purpose in purposes], "purpose id")
        return purposes

    @field_validator("fields")
    @classmethod
    def _compilable_fields(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
        _refuse_duplicates(fields, "field path")
        FieldFilter.compile(fields)  # raises on paths using a member as object and array
        return fields

    @field_validator("valid_until")
    @classmethod
    def _after_valid_from(cls, valid_until: datetime, info: ValidationInfo) -> datetime:
        valid_from = info.data.get("valid_from")
        if valid_from is not None and valid_until <= valid_from:
            raise ValueError("must be later than valid_from")
        return valid_until

    @property
    def parties(self) -> tuple[str, str]:
        """``(provider, consumer)``."""
        return (self.provider, self.consumer)

    def inactive_reason(self, now: int) -> str | None:
        """Why the contract is not in force at ``now`` (unix seconds), or None when it is."""
        if self.status != "active":
            return f"status is {self.status}"
        if now < int(self.valid_from.timestamp()):
            return "not yet valid"
        if now > int(self.valid_until.timestamp()):
            return "expired"
        return None

    def in_force(self, now: int) -> bool:
        """Active and ``valid_from <= now <= valid_until`` (signatures are checked on loading)."""
        return self.inactive_reason(now) is None

    def allows_purpose(self, purpose: str) -> bool:
        """Whether ``purpose`` is one of the contract's purposes."""
        return self.legal_basis(purpose) is not None

    def legal_basis(self, purpose: str) -> str | None:
        """The legal basis of ``purpose``, or None when the contract does not allow it."""
        return next((p.legal_basis for p in self.purposes if p.id == purpose), None)

    @cached_property
    def field_filter(self) -> FieldFilter:
        """The compiled filter of :attr:`fields` (built once per contract object)."""
        return FieldFilter.compile(self.fields)


def _refuse_duplicates(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed more than once")
        seen.add(value)


def canonical_bytes(contract: Contract) -> bytes:
    """The RFC 8785 bytes both parties sign: the model's JSON dump without ``signatures``.

    Defaults are included, so a later change of a default cannot silently
    change what a signed contract means: its signatures would stop verifying.
    """
    return bytes(rfc8785.dumps(contract.model_dump(mode="json", exclude={"signatures"})))


def sign_contract(contract: Contract, agency_id: str, key: PrivateKey) -> Contract:
    """A copy of ``contract`` with ``agency_id``'s signature added or replaced.

    The other party's signature is kept; signatures by non-parties are
    dropped. Provider's comes first. ``ValueError`` when ``agency_id`` is not
    a party or ``key`` is not a signing key.
    """
    if agency_id not in contract.parties:
        raise ValueError(f"{agency_id!r} is neither the provider nor the consumer")
    if key.use != "sig":
        raise ValueError("a contract is signed with a signing key")
    new = ContractSignature(
        agency=agency_id, jws=detached_signature(canonical_bytes(contract), key, CONTRACT_JWS_TYP)
    )
    mine = {sig.agency: sig for sig in contract.signatures if sig.agency in contract.parties}
    mine[agency_id] = new
    ordered = [mine[party].model_dump() for party in contract.parties if party in mine]
    return Contract.model_validate({**contract.model_dump(), "signatures": ordered})


def verify_signatures(contract: Contract, signing_keys_of: SigningKeysOf) -> list[str]:
    """Every reason the contract's signatures are not acceptable; empty when they are.

    Each party must have exactly one signature, by one of the signing keys
    ``signing_keys_of(agency)`` returns (the trust registry's keys of an
    active agency; an empty sequence for any other agency). A signature by
    anyone else is itself a problem.
    """
    problems = [
        f"signature by {sig.agency!r}, which is not a party to the contract"
        for sig in contract.signatures
        if sig.agency not in contract.parties
    ]
    payload = canonical_bytes(contract)
    for role, agency in zip(("provider", "consumer"), contract.parties, strict=True):
        jwss = [sig.jws for sig in contract.signatures if sig.agency == agency]
        if len(jwss) != 1:
            many = "more than one signature" if jwss else "no signature"
            problems.append(f"{many} by the {role} {agency!r}")
            continue
        problem = _signature_problem(jwss[0], payload, agency, signing_keys_of(agency))
        if problem:
            problems.append(f"signature of the {role} {agency!r}: {problem}")
    return problems


def _signature_problem(
    detached: str, payload: bytes, agency: str, keys: Sequence[PublicKey]
) -> str | None:
    if not keys:
        return f"the trust registry lists no signing key of {agency!r}"
    try:
        jws = parse_jws(attach_payload(detached, payload), CONTRACT_JWS_TYP)
        key = next((k for k in keys if k.use == "sig" and k.kid == jws.kid), None)
        if key is None:
            return f"key {jws.kid!r} is not a registry signing key of {agency!r}"
        jws.verify(key)
    except JoseError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ContractProblem:
    """Why a contract file was refused: the file, the field (dotted, or None) and the reason."""

    source: str
    field: str | None
    reason: str

    def __str__(self) -> str:
        return str(self.to_error())

    def to_error(self) -> SetupError:
        """This problem as the :class:`~gateway.errors.SetupError` it stands for."""
        return SetupError(self.source, self.reason, field=self.field)


def _location(loc: tuple[int | str, ...]) -> str | None:
    dotted = ""
    for part in loc:
        dotted += f"[{part}]" if isinstance(part, int) else f".{part}" if dotted else str(part)
    return dotted or None


_READABLE: Final[Mapping[str, str]] = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field: not part of the contract format",
}


def _validation_problems(source: str, error: ValidationError) -> list[ContractProblem]:
    errors = error.errors(include_url=False, include_input=False)
    parents = {item["loc"][:n] for item in errors for n in range(1, len(item["loc"]))}
    problems = []
    for item in errors:
        # Pydantic also counts a list "too short" when only its invalid items were dropped.
        if item["type"] == "too_short" and item["loc"] in parents:
            continue
        reason = _READABLE.get(item["type"], item["msg"]).removeprefix("Value error, ")
        reason = reason.replace("Tuple should", "List should")  # YAML has lists, not tuples
        problems.append(ContractProblem(source, _location(item["loc"]), reason))
    return problems


def check_contract_file(path: Path) -> tuple[Contract | None, tuple[ContractProblem, ...]]:
    """Read and validate one contract file: the contract, or None and every problem found.

    Signatures are not verified here (that needs the trust registry).
    """
    data = _read_contract_file(path)
    if isinstance(data, ContractProblem):
        return None, (data,)
    return check_contract_bytes(str(path), data)


def _read_contract_file(path: Path) -> bytes | ContractProblem:
    # The bytes of the file, or why there are none (unreadable, or over the size bound).
    source = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONTRACT_FILE_BYTES + 1)
    except OSError as exc:
        return ContractProblem(source, None, f"cannot read the file ({exc.strerror})")
    if len(data) > MAX_CONTRACT_FILE_BYTES:
        return ContractProblem(source, None, f"larger than {MAX_CONTRACT_FILE_BYTES} bytes")
    return data


def check_contract_bytes(
    source: str, data: bytes
) -> tuple[Contract | None, tuple[ContractProblem, ...]]:
    """Parse and validate the bytes of a contract file named ``source`` (used in problems).

    The part of :func:`check_contract_file` after reading: a pure function of
    ``source`` and ``data``, which is what lets :class:`ContractDirLoader`
    reuse its result while a file's bytes stay the same.
    """
    try:
        document = load_strict_yaml(data)
    except yaml.YAMLError as exc:
        return None, (ContractProblem(source, None, yaml_problem(exc)),)
    if not isinstance(document, dict):
        return None, (ContractProblem(source, None, "must be a YAML mapping of contract fields"),)
    try:
        return Contract.model_validate(document), ()
    except ValidationError as exc:
        return None, tuple(_validation_problems(source, exc))


def load_contract_file(path: Path) -> Contract:
    """Read and validate one contract file; ``SetupError`` names the first problem's field."""
    contract, problems = check_contract_file(path)
    if contract is None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SetupError(first.source, first.reason + more, field=first.field)
    return contract


@dataclass(frozen=True)
class ContractSet:
    """Verified contracts, looked up by id or by the parties and service they bind."""

    _by_id: Mapping[str, Contract]
    _by_route: Mapping[tuple[str, str, str], tuple[Contract, ...]]

    @classmethod
    def of(cls, contracts: Iterable[Contract]) -> ContractSet:
        """A set of ``contracts``; ``ValueError`` when two share an id."""
        by_id: dict[str, Contract] = {}
        by_route: dict[tuple[str, str, str], list[Contract]] = {}
        for contract in sorted(contracts, key=lambda c: c.id):
            if contract.id in by_id:
                raise ValueError(f"contract id {contract.id!r} appears more than once")
            by_id[contract.id] = contract
            route = (contract.provider, contract.consumer, contract.service)
            by_route.setdefault(route, []).append(contract)
        routes = {route: tuple(found) for route, found in by_route.items()}
        return cls(MappingProxyType(by_id), MappingProxyType(routes))

    def ids(self) -> tuple[str, ...]:
        """The contract ids, sorted."""
        return tuple(self._by_id)

    def has_service(self, service: str) -> bool:
        """Whether any contract binds ``service`` (constant time: the route index has it)."""
        return service in self._services

    @cached_property
    def _services(self) -> frozenset[str]:
        return frozenset(service for _, _, service in self._by_route)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Contract]:
        return iter(self._by_id.values())

    def get(self, contract_id: str) -> Contract | None:
        """The contract with ``contract_id``, or None."""
        return self._by_id.get(contract_id)

    def between(self, *, provider: str, consumer: str, service: str) -> tuple[Contract, ...]:
        """Every contract for ``service`` from ``provider`` to ``consumer``, by id.

        Keyword-only: the three are strings, and a swapped pair would silently find nothing.
        """
        return self._by_route.get((provider, consumer, service), ())

    def fitting(
        self, *, consumer: str, provider: str, service: str, purpose: str, now: int
    ) -> tuple[Contract, ...]:
        """The contracts in force at ``now`` that allow ``purpose`` on that route, by id.

        The agency side uses one when exactly one fits and the client named none.
        """
        return tuple(
            contract
            for contract in self.between(provider=provider, consumer=consumer, service=service)
            if contract.in_force(now) and contract.allows_purpose(purpose)
        )


@dataclass(frozen=True)
class ContractLoad:
    """The result of loading a directory: what is usable, and what was refused and why."""

    contracts: ContractSet
    problems: tuple[ContractProblem, ...]
    not_in_force: Mapping[str, str]  # contract id -> reason; loaded but not usable now


def load_contract_dir(directory: Path, signing_keys_of: SigningKeysOf, now: int) -> ContractLoad:
    """Load every ``*.yaml``/``*.yml`` file (not dotfiles) of ``directory``.

    A file that is unreadable, invalid or badly signed is left out and
    reported; so are both files when two declare the same contract id (which
    one was meant is unknown: deny by default). Suspended, revoked or expired
    contracts are loaded and listed in ``not_in_force``. Only an unreadable
    directory raises ``SetupError``. To load the same directory again and
    again, keep a :class:`ContractDirLoader`: it re-parses only what changed.
    """
    return ContractDirLoader(directory).load(signing_keys_of, now)


# The keys a signature check depended on: each party's keys, by (kid, use). A kid is
# the key's RFC 7638 thumbprint (gateway.keys), so equal kids are the same key.
_PartyKeys = tuple[tuple[tuple[str, str], ...], ...]


def _party_keys(contract: Contract, signing_keys_of: SigningKeysOf) -> _PartyKeys:
    return tuple(
        tuple((key.kid, key.use) for key in signing_keys_of(agency)) for agency in contract.parties
    )


class _ParsedFile:
    """One version of one file: its digest, what it parsed to, and its last signature check."""

    __slots__ = ("checked_under", "contract", "digest", "problems", "refusals")

    def __init__(
        self, digest: bytes, contract: Contract | None, problems: tuple[ContractProblem, ...]
    ) -> None:
        self.digest = digest
        self.contract = contract
        self.problems = problems
        # The signature check of ``contract``, and the parties' keys it was made under.
        self.checked_under: _PartyKeys | None = None
        self.refusals: tuple[str, ...] = ()


class ContractDirLoader:
    """Loads one contract directory again and again, doing only the work that changed.

    Every :meth:`load` gives exactly what :func:`load_contract_dir` gives for
    the directory as it is at that moment. Each file is still listed and read
    every time, but it is parsed and validated only when its bytes differ
    from the last load (compared by SHA-256, so a rewrite that keeps the
    size and modification time is still seen), and its signatures are
    checked again only when its bytes changed or ``signing_keys_of`` gives
    either party other keys than at the last check. A new trust registry
    that keeps the parties' keys (another agency added, a later expiry)
    costs no signature check.

    One load runs at a time (a lock), so a loader may be used from a worker
    thread. Its cache holds one entry per file of the last load; what it
    returns is immutable.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, _ParsedFile] = {}
        self._lock = threading.Lock()

    def parse(
        self, source: str, data: bytes
    ) -> tuple[Contract | None, tuple[ContractProblem, ...]]:
        """Parse and validate one file's bytes (:func:`check_contract_bytes`).

        The only place a loader parses; a subclass may wrap it (to count or time it).
        """
        return check_contract_bytes(source, data)

    def verify(self, contract: Contract, signing_keys_of: SigningKeysOf) -> list[str]:
        """Check one contract's signatures (:func:`verify_signatures`); the only place it does."""
        return verify_signatures(contract, signing_keys_of)

    def load(self, signing_keys_of: SigningKeysOf, now: int) -> ContractLoad:
        """Load the directory as :func:`load_contract_dir` does, reusing unchanged work.

        ``SetupError`` when the directory cannot be listed.
        """
        with self._lock:
            return self._load(signing_keys_of, now)

    def verified(
        self, contracts: Iterable[Contract], signing_keys_of: SigningKeysOf
    ) -> ContractSet:
        """The ``contracts`` whose signatures verify, reusing the checks of the last load.

        A contract that came from this loader's last load is not checked
        again while its parties' keys are those it was checked under; any
        other is checked now.
        """
        with self._lock:
            by_object = {id(f.contract): f for f in self._files.values() if f.contract is not None}
            kept = []
            for contract in contracts:
                parsed = by_object.get(id(contract))
                if parsed is not None and parsed.contract is contract:
                    refused = self._refusals(parsed, contract, signing_keys_of)
                else:
                    refused = tuple(self.verify(contract, signing_keys_of))
                if not refused:
                    kept.append(contract)
            return ContractSet.of(kept)

    def _load(self, signing_keys_of: SigningKeysOf, now: int) -> ContractLoad:
        directory = self.directory
        try:
            paths = sorted(
                path
                for path in directory.iterdir()
                if path.suffix in (".yaml", ".yml")
                and not path.name.startswith(".")
                and path.is_file()
            )
        except OSError as exc:
            raise SetupError(str(directory), f"cannot list contracts ({exc.strerror})") from exc
        problems: list[ContractProblem] = []
        parsed: list[tuple[str, _ParsedFile, Contract]] = []
        files: dict[str, _ParsedFile] = {}
        for path in paths:
            data = _read_contract_file(path)
            if isinstance(data, ContractProblem):
                problems.append(data)
                continue
            source = str(path)
            digest = hashlib.sha256(data).digest()
            entry = self._files.get(source)
            if entry is None or entry.digest != digest:
                entry = _ParsedFile(digest, *self.parse(source, data))
            files[source] = entry
            problems.extend(entry.problems)
            if entry.contract is not None:
                parsed.append((source, entry, entry.contract))
        # Files gone or unreadable leave the cache, so it never outgrows the directory.
        self._files = files
        sources: dict[str, list[str]] = {}
        for source, _, contract in parsed:
            sources.setdefault(contract.id, []).append(source)
        kept = []
        for source, entry, contract in parsed:
            others = [other for other in sources[contract.id] if other != source]
            if others:
                reason = f"contract id {contract.id!r} is also declared in {', '.join(others)}"
                problems.append(ContractProblem(source, "id", reason + "; neither file is loaded"))
                continue
            refused = self._refusals(entry, contract, signing_keys_of)
            problems.extend(ContractProblem(source, "signatures", reason) for reason in refused)
            if not refused:
                kept.append(contract)
        idle = {c.id: why for c in kept if (why := c.inactive_reason(now)) is not None}
        return ContractLoad(
            contracts=ContractSet.of(kept),
            problems=tuple(sorted(problems, key=lambda p: p.source)),
            not_in_force=MappingProxyType(idle),
        )

    def _refusals(
        self, entry: _ParsedFile, contract: Contract, signing_keys_of: SigningKeysOf
    ) -> tuple[str, ...]:
        # A check depends only on the contract's bytes and its parties' keys.
        party_keys = _party_keys(contract, signing_keys_of)
        if entry.checked_under != party_keys:
            entry.refusals = tuple(self.verify(contract, signing_keys_of))
            entry.checked_under = party_keys
        return entry.refusals


def contract_json_schema() -> dict[str, Any]:
    """The published JSON Schema (draft 2020-12) of a contract document."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Contract.model_json_schema(),
    }


def contract_schema_text() -> str:
    """:func:`contract_json_schema` as the exact text of ``contracts/schema.json``."""
    return json.dumps(contract_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.contracts [PATH]``: write the schema, by default to the repo's file."""
    args = sys.argv[1:] if argv is None else argv
    Path(args[0] if args else "contracts/schema.json").write_text(
        contract_schema_text(), encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

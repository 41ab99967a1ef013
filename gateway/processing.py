"""The GDPR Article 30(1) record of processing activities, derived from signed contracts.

Why derive it: a record of processing written by hand drifts from what the
gateways actually enforce. Every disclosure this gateway makes happens under a
signed contract that names the provider (the controller that discloses), the
consumer (the recipient), the purposes with their legal basis, the exact field
paths released, the retention duty and the validity window. Building the
record from the same verified contracts the gateways load means the record
says what is enforced, and a change to what is enforced changes the record.

One processing activity is one purpose of one contract. Contracts that are
not in force at the chosen instant (expired, not yet valid, suspended or
revoked) are kept in a separate list: they authorise nothing at that instant
but belong in the record's history.

Pure: :func:`build_record` takes contracts that the caller has already
loaded and verified (``load_contract_dir``), agency names from the trust
registry and an instant in unix seconds; the ``render_*`` functions return
text. Nothing here reads files, the clock or the network.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from gateway.contracts import Contract

Role = Literal["controller", "recipient", "any"]
OutputFormat = Literal["text", "json", "markdown"]

ROLES: Final[tuple[Role, ...]] = ("any", "controller", "recipient")
FORMATS: Final[tuple[OutputFormat, ...]] = ("text", "json", "markdown")

TITLE: Final = "Record of processing activities (GDPR Art. 30(1))"

THIRD_COUNTRY_TRANSFERS: Final = (
    "none: exchanges only between registered agencies' gateways (a property of the system: "
    "a gateway exchanges only with agencies listed as active in the signed trust registry)"
)

RECIPIENT_SYSTEMS: Final = (
    "client systems not named in the contract: the recipient gateway's configuration lists "
    "the client systems that may use it"
)

# Art. 30(1)(g): a general description of the technical and organisational
# measures, kept to what this codebase does (see README "Status").
SECURITY_MEASURES: Final[tuple[str, ...]] = (
    "Signed and encrypted payloads: every message between gateways is a JWS signed by the "
    "sender (EdDSA with Ed25519 keys by default, ES256 with P-256 on request) inside a JWE "
    "encrypted to the recipient's key (ECDH-ES+A256KW with X25519 by default or P-256, "
    "content encryption A256GCM); typ, alg and kid are fixed per position and key-carrying "
    "headers are refused.",
    "Trust registry: gateways exchange only with agencies listed as active in a registry "
    "signed by the registry authority, and accept only the keys it lists; a contract is "
    "loaded only when both parties' signatures verify against those keys.",
    "Purpose- and key-bound access tokens: short-lived (at most 300 s) tokens bound to one "
    "contract version, one service and one purpose, and to the consumer's signing key "
    "(cnf.jkt, proof of possession); single-use client assertions; request and response "
    "messages expire within 120 s and a replayed request is refused.",
    "Field minimisation: a deny-by-default filter releases only the contract's field paths; "
    "the consumer gateway refuses a response holding anything the contract does not release.",
    "Access by agency systems: client systems authenticate with API keys stored only as "
    "SHA-256 hashes and may use only the contracts their configuration lists; the official "
    "on whose behalf a request is made is named where the contract requires it.",
    "Pseudonymised audit log: an append-only record of every exchange, token grant and "
    "refusal by the exchange pipeline is written durably before the answer leaves, and "
    "exchanges are refused when it cannot be written; records hold field names but never "
    "bodies or values, and subject and end-user ids only as HMAC-SHA-256 pseudonyms under "
    "the agency's audit key. The log is a tamper-evident Merkle tree (RFC 9162) with "
    "checkpoints signed by the agency's Ed25519 log key; inclusion and consistency proofs "
    "let anyone holding the public key check it, and every officer query is itself logged.",
    "Rate limits: a per-contract token bucket (the contract's rate_limit) and a per-contract "
    "bound on request size, applied by the provider gateway (the buckets are held per gateway "
    "process); admission control bounds the requests in flight.",
)

NOTES: Final[tuple[str, ...]] = (
    "Contact details of the controllers and of their data protection officers (Art. 30(1)(a)) "
    "are held neither in contracts nor in the trust registry; add them from each agency's own "
    "records.",
    "Agency names come from the signed trust registry; every other entry comes from the "
    "signed contracts.",
)

IN_FORCE: Final = "in force"


@dataclass(frozen=True)
class Agency:
    """An agency by id, with its registry name when known."""

    id: str
    name: str | None


@dataclass(frozen=True)
class DataCategory:
    """Released field paths that share a top-level member: one category of personal data."""

    category: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Activity:
    """One processing activity: one purpose of one contract, with the Art. 30(1) entries."""

    contract: str
    contract_version: int
    service: str
    purpose: str
    legal_basis: str
    controller: Agency
    recipient: Agency
    recipient_systems: str
    data_subjects: str
    subject_field: str
    released_fields: tuple[str, ...]
    personal_data: tuple[DataCategory, ...]
    third_country_transfers: str
    retention_days: int
    retention: str
    valid_from: str
    valid_until: str
    status: str
    state: str
    in_force: bool
    contract_measures: str


@dataclass(frozen=True)
class ProcessingRecord:
    """The whole record at one instant: activities in force, and those that are not."""

    title: str
    at: str
    source: str
    agency: str | None
    role: Role
    in_force: tuple[Activity, ...]
    not_in_force: tuple[Activity, ...]
    third_country_transfers: str
    security_measures: tuple[str, ...]
    notes: tuple[str, ...]


_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)


def parse_instant(text: str) -> int:
    """Unix seconds of an RFC 3339 date-time with a time zone (fractions are dropped).

    ``ValueError`` for anything else, including a local time without an offset.
    """
    value = text.strip()
    if not _RFC3339.fullmatch(value):
        raise ValueError(f"{text!r} is not an RFC 3339 date-time like 2026-01-01T00:00:00Z")
    # datetime accepts at most six fraction digits; seconds are all that matter here.
    value = re.sub(r"(\.\d{1,6})\d*", r"\1", value.upper())
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date-time: {exc}") from exc


def utc_text(moment: datetime | int) -> str:
    """``moment`` (a datetime or unix seconds) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def group_fields(paths: Iterable[str]) -> tuple[DataCategory, ...]:
    """Field paths grouped by top-level member (``a[].b`` and ``a.c`` both under ``a``), sorted."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        top = path.split(".", 1)[0].removesuffix("[]")
        groups.setdefault(top, []).append(path)
    return tuple(DataCategory(top, tuple(sorted(groups[top]))) for top in sorted(groups))


def contract_activities(
    contract: Contract, at: int, names: Mapping[str, str] | None = None
) -> tuple[Activity, ...]:
    """The processing activities of one contract (one per purpose), evaluated at ``at``."""
    names = names or {}
    reason = contract.inactive_reason(at)
    requests, seconds = contract.rate_limit.requests, contract.rate_limit.per_seconds
    measures = (
        f"at most {requests} requests per {seconds} s; "
        f"request messages up to {contract.max_request_bytes} bytes"
    )
    if contract.requires_end_user:
        measures += "; every request names the official on whose behalf it is made"
    subjects = (
        f"the persons whose records service '{contract.service}' of {contract.provider} holds, "
        f"each identified in a request by its member '{contract.subject_field}' (derived from "
        f"service {contract.service}: the contract names no category of data subjects)"
    )
    retention = (
        f"{contract.retention_days} days: the recipient's retention duty for the released data "
        "(contract member retention_days); the gateway keeps no released values, so the "
        "recipient applies it in its own systems"
    )
    return tuple(
        Activity(
            contract=contract.id,
            contract_version=contract.version,
            service=contract.service,
            purpose=purpose.id,
            legal_basis=purpose.legal_basis,
            controller=Agency(contract.provider, names.get(contract.provider)),
            recipient=Agency(contract.consumer, names.get(contract.consumer)),
            recipient_systems=RECIPIENT_SYSTEMS,
            data_subjects=subjects,
            subject_field=contract.subject_field,
            released_fields=contract.fields,
            personal_data=group_fields(contract.fields),
            third_country_transfers=THIRD_COUNTRY_TRANSFERS,
            retention_days=contract.retention_days,
            retention=retention,
            valid_from=utc_text(contract.valid_from),
            valid_until=utc_text(contract.valid_until),
            status=contract.status,
            state=reason or IN_FORCE,
            in_force=reason is None,
            contract_measures=measures,
        )
        for purpose in contract.purposes
    )


def concerns(contract: Contract, agency: str | None, role: Role) -> bool:
    """Whether ``contract`` belongs in ``agency``'s record in ``role`` (always, with no agency)."""
    if agency is None:
        return True
    as_controller = role in ("controller", "any") and contract.provider == agency
    as_recipient = role in ("recipient", "any") and contract.consumer == agency
    return as_controller or as_recipient


def build_record(
    contracts: Iterable[Contract],
    *,
    at: int,
    names: Mapping[str, str] | None = None,
    agency: str | None = None,
    role: Role = "any",
    source: str = "",
) -> ProcessingRecord:
    """The Art. 30(1) record of ``contracts`` at ``at`` (unix seconds).

    ``contracts`` must already be verified (both signatures checked against
    the trust registry); ``names`` maps agency ids to registry names. With
    ``agency``, only the contracts where it is the controller (the provider)
    or the recipient (the consumer) are kept, as ``role`` says. Activities
    are ordered by contract id, then by the contract's order of purposes.
    """
    activities = [
        activity
        for contract in sorted(contracts, key=lambda c: c.id)
        if concerns(contract, agency, role)
        for activity in contract_activities(contract, at, names)
    ]
    return ProcessingRecord(
        title=TITLE,
        at=utc_text(at),
        source=source,
        agency=agency,
        role=role,
        in_force=tuple(a for a in activities if a.in_force),
        not_in_force=tuple(a for a in activities if not a.in_force),
        third_country_transfers=THIRD_COUNTRY_TRANSFERS,
        security_measures=SECURITY_MEASURES,
        notes=NOTES,
    )


def record_json(record: ProcessingRecord) -> dict[str, Any]:
    """The record as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(record)


def render_json(record: ProcessingRecord) -> str:
    """The record as indented JSON text, ending in a newline."""
    return json.dumps(record_json(record), indent=2, ensure_ascii=False) + "\n"


def _one_line(value: str) -> str:
    # Contract text is signed but free-form: keep each entry on one line.
    return " ".join(value.split())


def _scope(record: ProcessingRecord) -> str:
    if record.agency is None:
        return "all agencies"
    as_role = {
        "any": "controller or recipient",
        "controller": "controller",
        "recipient": "recipient",
    }[record.role]
    return f"agency {record.agency} as {as_role}"


def _entries(activity: Activity, code: str = "") -> list[tuple[str, str]]:
    def c(value: str) -> str:
        return f"{code}{value}{code}"

    def category(data: DataCategory) -> str:
        if data.paths == (data.category,):
            return c(data.category)
        return f"{c(data.category)} ({', '.join(map(c, data.paths))})"

    categories = "; ".join(map(category, activity.personal_data))
    return [
        ("(a) controller", f"{c(activity.controller.id)}" + _name(activity.controller)),
        ("(b) purpose", c(activity.purpose)),
        ("legal basis", _one_line(activity.legal_basis)),
        ("(c) data subjects", activity.data_subjects),
        ("(c) personal data", categories),
        (
            "(d) recipients",
            f"{c(activity.recipient.id)}{_name(activity.recipient)}; {activity.recipient_systems}",
        ),
        ("(e) third countries", activity.third_country_transfers),
        ("(f) time limits", activity.retention),
        (
            "validity",
            f"{activity.valid_from} to {activity.valid_until}, status {activity.status} "
            f"({activity.state})",
        ),
        ("contract measures", activity.contract_measures),
    ]


def _name(agency: Agency) -> str:
    return f" ({_one_line(agency.name)})" if agency.name else ""


def _heading(activity: Activity) -> str:
    return f"{activity.contract} v{activity.contract_version}, purpose {activity.purpose}"


def render_text(record: ProcessingRecord) -> str:
    """The record as plain text: one line per entry, sections for in force and not."""
    lines = [record.title, "=" * len(record.title), ""]
    if record.source:
        lines.append(f"Derived from {record.source}.")
    lines += [f"Evaluated at {record.at} for {_scope(record)}.", ""]
    sections = (
        (f"In force at {record.at}", record.in_force),
        (f"Not in force at {record.at} (they authorise no exchange)", record.not_in_force),
    )
    for title, activities in sections:
        header = f"{title}: {len(activities)}"
        lines += [header, "-" * len(header)]
        if not activities:
            lines += ["(none)", ""]
        for activity in activities:
            marker = "" if activity.in_force else f"  [{activity.state.upper()}]"
            lines.append(_heading(activity) + marker)
            width = max(len(label) for label, _ in _entries(activity))
            lines += [f"  {label:<{width}}  {value}" for label, value in _entries(activity)]
            lines.append("")
    title = "(g) Technical and organisational security measures (all activities)"
    lines += [title, "-" * len(title)]
    lines += [f"- {measure}" for measure in record.security_measures]
    lines += ["", "Notes", "-----"]
    lines += [f"- {note}" for note in record.notes]
    return "\n".join(lines) + "\n"


_MARKDOWN_SPECIAL: Final = re.compile(r"([\\`*_\[\]<>|#])")


def _md(value: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _one_line(value))


def render_markdown(record: ProcessingRecord) -> str:
    """The record as Markdown: a table of Art. 30(1) entries per activity."""
    lines = [f"# {record.title}", ""]
    if record.source:
        lines.append(f"Derived from {_md(record.source)}.")
    lines += [f"Evaluated at {record.at} for {_md(_scope(record))}.", ""]
    sections = (
        (f"In force at {record.at}", record.in_force),
        (f"Not in force at {record.at}", record.not_in_force),
    )
    for title, activities in sections:
        lines += [f"## {title} ({len(activities)})", ""]
        if not activities:
            lines += ["None.", ""]
        elif not activities[0].in_force:
            lines += ["These contracts authorise no exchange at this instant.", ""]
        for activity in activities:
            marker = "" if activity.in_force else f" ({activity.state.upper()})"
            heading = (
                f"`{activity.contract}` v{activity.contract_version}, "
                f"purpose `{activity.purpose}`{marker}"
            )
            lines += [f"### {heading}", "", "| Art. 30(1) | entry |", "|---|---|"]
            for label, value in _markdown_entries(activity):
                lines.append(f"| {label} | {value} |")
            lines.append("")
    lines += ["## (g) Technical and organisational security measures", ""]
    lines += [f"- {_md(measure)}" for measure in record.security_measures]
    lines += ["", "## Notes", ""]
    lines += [f"- {_md(note)}" for note in record.notes]
    return "\n".join(lines) + "\n"


def _markdown_entries(activity: Activity) -> list[tuple[str, str]]:
    # Ids and field paths go in code spans (their patterns exclude backticks);
    # free text (legal basis, agency names) is escaped.
    escaped = dataclasses.replace(
        activity,
        legal_basis=_md(activity.legal_basis),
        controller=Agency(activity.controller.id, _md_or_none(activity.controller.name)),
        recipient=Agency(activity.recipient.id, _md_or_none(activity.recipient.name)),
        data_subjects=_md(activity.data_subjects),
        recipient_systems=_md(activity.recipient_systems),
        third_country_transfers=_md(activity.third_country_transfers),
        retention=_md(activity.retention),
        contract_measures=_md(activity.contract_measures),
    )
    return _entries(escaped, code="`")


def _md_or_none(value: str | None) -> str | None:
    return _md(value) if value else value


def render(record: ProcessingRecord, output_format: OutputFormat) -> str:
    """The record in ``output_format`` (``text``, ``json`` or ``markdown``)."""
    if output_format == "json":
        return render_json(record)
    if output_format == "markdown":
        return render_markdown(record)
    return render_text(record)

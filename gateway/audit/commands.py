"""``gateway audit ...``: a privacy officer's tools on the command line.

``verify`` audits a whole store and changes nothing. ``query``, ``prove`` and
``subject-report`` read the store the config names and, like the officer API,
append a record of the query first (officer ``cli:{os user}``): reading the
log is itself logged. ``check-proof`` needs only a bundle file and the log's
public verifier key.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from gateway.audit import AuditLog, log_signer, open_audit_log
from gateway.audit.bundle import BundleError, check_bundle, leaf_document, make_bundle
from gateway.audit.note import NoteError, NoteVerifier
from gateway.audit.query import QueryError, RecordQuery, parse_query
from gateway.audit.records import AuditRecord, load_audit_key, new_record_identity, record_time
from gateway.audit.store import (
    AuditStore,
    AuditStoreError,
    SqliteAuditStore,
    StoredLeaf,
    open_store,
)
from gateway.audit.verify import verify_log
from gateway.config import GatewaySettings, load_settings
from gateway.errors import SetupError

Command = Callable[[argparse.Namespace], int]
FILTERS: Final = (
    "consumer",
    "provider",
    "contract",
    "purpose",
    "outcome",
    "kind",
    "since",
    "until",
)
TABLE_COLUMNS: Final = ("index", "time", "kind", "direction", "outcome", "consumer", "provider",
                        "contract", "purpose", "fields")  # fmt: skip


def _settings(args: argparse.Namespace) -> GatewaySettings:
    return load_settings(Path(args.config))


def _existing_store(settings: GatewaySettings) -> AuditStore:
    """The configured store; ``SetupError`` if its SQLite file does not exist.

    Opening a SQLite store creates it: a deleted log would otherwise "verify"
    as an empty one, and a query would start a new log.
    """
    store = open_store(settings.audit.store, settings.base_dir)
    if isinstance(store, SqliteAuditStore) and not store.path.is_file():
        raise SetupError(str(store.path), "no audit store here: check audit.store in the config")
    return store


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Recompute the whole tree and check every checkpoint; exit 1 naming the first bad index."""
    settings = _settings(args)
    if args.key:
        try:
            verifier = NoteVerifier.from_verifier_key(args.key)
        except NoteError as exc:
            raise SetupError("--key", str(exc)) from exc
    else:
        verifier = NoteVerifier.from_verifier_key(log_signer(settings).verifier_key())

    async def run() -> int:
        store = _existing_store(settings)
        await store.open()
        try:
            report = await verify_log(store, verifier, f"{settings.agency}/audit")
        except AuditStoreError as exc:  # a corrupt file: a finding, not a traceback
            raise SetupError(
                f"{settings.agency}/audit", f"cannot read the audit store: {exc}"
            ) from exc
        finally:
            await store.close()
        if report.ok:
            print(
                f"audit log {settings.agency}/audit: OK, {report.size} records, "
                f"{report.checkpoints} checkpoints verified"
            )
            return 0
        where = f"index {report.bad_index}" if report.bad_index is not None else "checkpoints"
        print(f"audit log {settings.agency}/audit: BAD at {where}: {report.reason}")
        return 1

    return asyncio.run(run())


async def _logged(log: AuditLog, settings: GatewaySettings, detail: str, **members: Any) -> None:
    """Append the record of an officer's command-line query before answering it."""
    record = AuditRecord(
        **new_record_identity(),
        time=record_time(log.clock()),
        kind="officer-query",
        direction="local",
        outcome="ok",
        status=200,
        officer=f"cli:{getpass.getuser()}",
        detail=detail,
        **members,
    )
    await log.append(record)


def _with_log(settings: GatewaySettings, work: Callable[[AuditLog], Any]) -> Any:
    _existing_store(settings)

    async def run() -> Any:
        log = await open_audit_log(settings)
        try:
            return await work(log)
        finally:
            await log.close()

    return asyncio.run(run())


def _query_params(args: argparse.Namespace) -> dict[str, str]:
    params = {name: getattr(args, name) for name in FILTERS if getattr(args, name)}
    if args.subject:
        params["subject"] = args.subject
    params["order"] = args.order
    return params


def cmd_audit_query(args: argparse.Namespace) -> int:
    """Search the log with the officer API's filters; table, JSON lines or CSV."""
    settings = _settings(args)
    if args.limit is not None and args.limit < 1:  # a negative slice would drop the newest
        raise SetupError("--limit", "must be a whole number of at least 1")
    pseudonymize = load_audit_key(_audit_key_path(settings))
    params = _query_params(args)
    try:
        query = parse_query({**params, "limit": "1000"}, pseudonymize.all_pseudonyms)
    except QueryError as exc:
        raise SetupError("audit query", str(exc)) from exc

    async def work(log: AuditLog) -> list[StoredLeaf]:
        described = {k: v for k, v in params.items() if k != "subject"}
        subject = pseudonymize(args.subject) if args.subject else None
        await _logged(log, settings, "gateway audit query", query=described, subject=subject)
        return await _all_pages(log, query, args.limit)

    leaves: list[StoredLeaf] = _with_log(settings, work)
    sys.stdout.write(render_records([leaf_document(leaf) for leaf in leaves], args.format))
    return 0


async def _all_pages(log: AuditLog, query: RecordQuery, limit: int | None) -> list[StoredLeaf]:
    found: list[StoredLeaf] = []
    while True:
        page = await log.find(query)
        found.extend(page)
        if len(page) < query.limit or (limit is not None and len(found) >= limit):
            return found[:limit] if limit is not None else found
        query = query.model_copy(update={"after": page[-1].index})


def render_records(documents: list[dict[str, Any]], form: str) -> str:
    """Records as an aligned table, JSON lines or CSV."""
    if form == "jsonl":
        return "".join(json.dumps(doc, sort_keys=True) + "\n" for doc in documents)
    rows = [[_cell(doc, column) for column in TABLE_COLUMNS] for doc in documents]
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(rows)
        return out.getvalue()
    widths = [
        max([len(column), *(len(row[n]) for row in rows)]) for n, column in enumerate(TABLE_COLUMNS)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(document: dict[str, Any], column: str) -> str:
    if column == "index":
        return str(document["index"])
    record = document.get("record") or {}
    value = record.get(column)
    if value is None:
        return "(deleted)" if document.get("record") is None and column == "kind" else "-"
    return printable(",".join(value) if isinstance(value, list) else str(value))


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters escaped, not interpreted.

    Some members are chosen by whoever sent the request (a refused token
    request's purpose, before its sender is authenticated); a newline or an
    escape sequence would forge table rows or drive the officer's terminal.
    """
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _audit_key_path(settings: GatewaySettings) -> Path:
    path = settings.keys.audit_key
    if path is None:  # pragma: no cover - config always resolves a default
        raise SetupError("keys.audit_key", "no audit key configured")
    return path


async def _bundle_for(log: AuditLog, index: int) -> dict[str, Any]:
    """A proof bundle for ``index`` against a checkpoint that covers it."""
    checkpoint = await log.latest_checkpoint()
    if checkpoint.size <= index:
        signed = await log.checkpoint()
        checkpoint = signed if signed is not None else await log.latest_checkpoint()
    stored = await log.read(index)
    proof = await log.inclusion_proof(index, checkpoint.size)
    return make_bundle(log.origin, stored, proof, checkpoint)


def cmd_audit_prove(args: argparse.Namespace) -> int:
    """Write one record, its inclusion proof and a signed checkpoint as a JSON bundle."""
    settings = _settings(args)

    async def work(log: AuditLog) -> dict[str, Any]:
        await _logged(log, settings, "gateway audit prove", query={"index": str(args.index)})
        if not 0 <= args.index < await log.size():
            raise SetupError("audit prove", f"the log has no record {args.index}")
        return await _bundle_for(log, args.index)

    bundle = _with_log(settings, work)
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_audit_key(args: argparse.Namespace) -> int:
    """Print the log's C2SP verifier key: what officers and outsiders pin to check it."""
    print(log_signer(_settings(args)).verifier_key())
    return 0


def cmd_audit_check_proof(args: argparse.Namespace) -> int:
    """Verify a proof bundle offline with the log's public verifier key."""
    try:
        bundle = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SetupError(args.file, f"cannot read the bundle ({exc.strerror})") from exc
    except ValueError as exc:
        raise SetupError(args.file, "not a JSON file") from exc
    key = args.key.strip()
    try:
        NoteVerifier.from_verifier_key(key)
    except NoteError as exc:  # no key to check with: a usage error, not an invalid proof
        raise SetupError("--key", str(exc)) from exc
    try:
        checked = check_bundle(bundle, key)
    except BundleError as exc:
        print(f"proof INVALID: {exc}")
        return 1
    content = "record content" if checked.record is not None else "leaf hash (content deleted)"
    print(
        f"proof OK: {content} is index {checked.index} of {checked.origin}, "
        f"in the tree of {checked.tree_size} records its signed checkpoint names"
    )
    return 0


def cmd_audit_subject_report(args: argparse.Namespace) -> int:
    """Every access to one data subject, with proofs: the citizen's data-tracker view."""
    settings = _settings(args)
    pseudonymize = load_audit_key(_audit_key_path(settings))
    query = RecordQuery(subjects=tuple(pseudonymize.all_pseudonyms(args.subject)), limit=1000)

    async def work(log: AuditLog) -> list[dict[str, Any]]:
        await _logged(
            log, settings, "gateway audit subject-report", subject=pseudonymize(args.subject)
        )
        leaves = await _all_pages(log, query, None)
        return [await _bundle_for(log, leaf.index) for leaf in leaves]

    bundles: list[dict[str, Any]] = _with_log(settings, work)
    if args.format == "json":
        document = {
            "origin": f"{settings.agency}/audit",
            "verifier_key": log_signer(settings).verifier_key(),
            "accesses": bundles,
        }
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_subject_report(settings.agency, bundles))
    return 0


def render_subject_report(agency: str, bundles: list[dict[str, Any]]) -> str:
    """The plain-language report: one paragraph per access."""
    lines = [f"Accesses to one data subject recorded by {agency} ({len(bundles)} records)", ""]
    for bundle in bundles:
        record = bundle.get("record")
        if record is None:
            lines.append(f"#{bundle['index']}: details deleted after their retention period")
            continue
        who = record.get("officer") or record.get("consumer") or "-"
        lines.append(
            f"#{bundle['index']} {record['time']} {record['kind']} ({record['outcome']}): "
            f"{who} -> {record.get('provider') or agency}"
        )
        if record.get("purpose"):
            lines.append(f"    purpose {record['purpose']} under contract {record.get('contract')}")
        if record.get("legal_basis"):
            lines.append(f"    legal basis: {record['legal_basis']}")
        if record.get("fields"):
            lines.append(f"    fields released: {', '.join(record['fields'])}")
    lines += ["", "Each record has an inclusion proof in --format json (check with "
              "`gateway audit check-proof`)."]  # fmt: skip
    return "\n".join(printable(line) for line in lines) + "\n"


def add_audit_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    command: Callable[[argparse._SubParsersAction[argparse.ArgumentParser], str, Command], Any],
) -> None:
    """Register ``gateway audit ...`` on the top-level parser."""
    audit = commands.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="sub", required=True
    )
    verify = command(audit, "verify", cmd_audit_verify)
    verify.add_argument("--config", required=True)
    verify.add_argument("--key", help="verify with this C2SP verifier key instead of the log key")

    key = command(audit, "key", cmd_audit_key)
    key.add_argument("--config", required=True)

    query = command(audit, "query", cmd_audit_query)
    query.add_argument("--config", required=True)
    query.add_argument("--subject", help="a clear subject id, matched by pseudonym")
    for name in FILTERS:
        query.add_argument(f"--{name}")
    query.add_argument("--order", choices=["asc", "desc"], default="asc")
    query.add_argument("--limit", type=int, help="at most this many records")
    query.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")

    prove = command(audit, "prove", cmd_audit_prove)
    prove.add_argument("index", type=int)
    prove.add_argument("--config", required=True)
    prove.add_argument("--out", help="write the bundle here instead of stdout")

    check = command(audit, "check-proof", cmd_audit_check_proof)
    check.add_argument("file")
    check.add_argument("--key", required=True, help="the log's C2SP verifier key")

    report = command(audit, "subject-report", cmd_audit_subject_report)
    report.add_argument("subject", metavar="ID")
    report.add_argument("--config", required=True)
    report.add_argument("--format", choices=["text", "json"], default="text")

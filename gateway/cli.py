"""The ``gateway`` command.

Every sub-command validates its inputs and reports a problem as one line on
stderr with exit status 1 (2 for usage errors); no traceback reaches the
operator for anything the operator can fix.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from gateway.allocator import map_large_buffers
from gateway.audit.commands import add_audit_commands
from gateway.audit.records import generate_audit_key, rotate_audit_key
from gateway.config import GatewaySettings, hash_api_key, load_settings
from gateway.contracts import (
    check_contract_file,
    contract_schema_text,
    load_contract_dir,
    sign_contract,
)
from gateway.errors import GatewayError, SetupError
from gateway.keys import (
    load_private_key,
    load_public_key_file,
    write_key_dir,
    write_log_key,
)
from gateway.observability import configure_logging
from gateway.processing import FORMATS, ROLES, build_record, parse_instant, render
from gateway.registry import Registry, build_registry_payload, sign_registry, verify_registry
from gateway.workers import resolve_workers


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise SetupError("--passphrase-env", f"environment variable {variable} is not set")
    return value.encode("utf-8")


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Write an agency's signing and encryption keys, its JWKS and its audit key."""
    directory = Path(args.dir)
    keys = write_key_dir(directory, args.alg, _passphrase(args.passphrase_env))
    generate_audit_key(directory / "audit.key")
    print(f"agency {args.agency}: keys written to {directory}")
    print(f"  signing kid    {keys.signing.kid} ({keys.signing.alg})")
    print(f"  encryption kid {keys.encryption.kid} ({keys.encryption.alg})")
    print(f"  publish {directory / 'jwks.json'} through the trust registry")
    return 0


def cmd_keys_generate_log_key(args: argparse.Namespace) -> int:
    """Write a new Ed25519 audit log key (for key folders made before the Merkle log)."""
    path = Path(args.file)
    write_log_key(path, _passphrase(args.passphrase_env))
    print(f"audit log key written to {path}; it signs checkpoints only")
    return 0


def cmd_keys_rotate_audit_key(args: argparse.Namespace) -> int:
    """Add a new audit key epoch: new records use it; searches still try the old ones."""
    epoch = rotate_audit_key(Path(args.file))
    print(f"audit key epoch {epoch} added to {args.file}; restart the gateway to use it")
    print("  records pseudonymised under older epochs stay findable while their key is listed")
    return 0


def cmd_keys_api_key(args: argparse.Namespace) -> int:
    """Print a new random API key and the hash to put in gateway.yaml."""
    key = args.key or secrets.token_urlsafe(32)
    print(json.dumps({"api_key": key, "key_sha256": hash_api_key(key)}, indent=2))
    return 0


def cmd_registry_sign(args: argparse.Namespace) -> int:
    """Sign a registry source file with the authority's key."""
    authority = load_private_key(Path(args.key), "sig", _passphrase(args.passphrase_env))
    payload = build_registry_payload(Path(args.source), int(time.time()))
    Path(args.out).write_text(sign_registry(payload, authority) + "\n", encoding="ascii")
    count = len(payload["agencies"])
    print(f"registry serial {payload['serial']} with {count} agencies -> {args.out}")
    return 0


def cmd_contracts_sign(args: argparse.Namespace) -> int:
    """Add (or replace) one party's detached signature in a contract file."""
    path = Path(args.file)
    contract, problems = check_contract_file(path)
    fatal = [p for p in problems if p.field != "signatures"]
    if contract is None or fatal:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    key = load_private_key(Path(args.key), "sig", _passphrase(args.passphrase_env))
    try:
        signed = sign_contract(contract, args.agency, key)
    except ValueError as exc:
        raise SetupError(str(path), str(exc), field="signatures") from exc
    document = signed.model_dump(mode="json")
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    print(f"{path}: signed by {args.agency} (kid {key.kid})")
    return 0


def _contract_registry(args: argparse.Namespace, now: int) -> Registry:
    """The trust registry that contract signatures are checked against (``--registry``)."""
    registry_path = Path(args.registry)
    authority_path = Path(args.authority_key or registry_path.parent / "authority.jwks.json")
    authority = load_public_key_file(authority_path, "sig")
    try:
        compact = registry_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(str(registry_path), "cannot read the registry") from exc
    return verify_registry(compact, authority, now)


def cmd_contracts_validate(args: argparse.Namespace) -> int:
    """Check every contract file in a directory; print every problem; exit 1 on any."""
    now = int(time.time())
    registry = _contract_registry(args, now)
    loaded = load_contract_dir(Path(args.dir), registry.signing_keys, now)
    for problem in loaded.problems:
        print(problem)
    for contract in loaded.contracts:
        state = loaded.not_in_force.get(contract.id, "in force")
        print(f"{contract.id} v{contract.version}: valid ({state})")
    return 1 if loaded.problems else 0


def cmd_contracts_record_of_processing(args: argparse.Namespace) -> int:
    """Print the GDPR Art. 30 record of processing derived from signed contracts."""
    now = int(time.time())
    # The registry is checked as a gateway checks it now; --at moves only contract validity.
    registry = _contract_registry(args, now)
    if args.agency is not None and registry.agency(args.agency) is None:
        raise SetupError("--agency", f"{args.agency!r} is not listed in the trust registry")
    directory = Path(args.dir)
    loaded = load_contract_dir(directory, registry.signing_keys, now)
    if loaded.problems:
        # A record that silently left out a refused file would look complete: write none.
        for problem in loaded.problems:
            print(f"gateway: {problem}", file=sys.stderr)
        count = len({problem.source for problem in loaded.problems})
        print(
            f"gateway: no record of processing written: {count} contract file(s) in "
            f"{directory} refused; fix them or remove them, then run again",
            file=sys.stderr,
        )
        return 1
    record = build_record(
        loaded.contracts,
        at=now if args.at is None else args.at,
        names={agency_id: entry.name for agency_id, entry in registry.agencies.items()},
        agency=args.agency,
        role=args.role,
        source=(
            f"{len(loaded.contracts)} signed contract(s) in {directory}, verified against "
            f"trust registry serial {registry.serial}"
        ),
    )
    sys.stdout.write(render(record, args.format))
    return 0


def _instant(text: str) -> int:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_contracts_schema(args: argparse.Namespace) -> int:
    """Print the contract JSON Schema (or write it to a file)."""
    text = contract_schema_text()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one gateway until SIGTERM or SIGINT (``--workers N``: N processes on one port)."""
    from gateway.web.server import run_on_event_loop, serve  # noqa: PLC0415 - aiohttp only here

    config = Path(args.config)
    settings = load_settings(config)
    map_large_buffers()  # this process serves until it exits: see gateway.allocator
    if args.worker_index is not None:
        return _serve_as_worker(args, settings)
    configure_logging(settings.log.level, settings.log.format)
    workers = args.workers if args.workers is not None else resolve_workers(settings.listen.workers)
    if workers > 1:
        from gateway.workers import run_workers  # noqa: PLC0415 - beside serve

        return run_workers(config, settings, workers)
    run_on_event_loop(serve(settings, tune_gc=True), settings.listen.event_loop)
    return 0


def _serve_as_worker(args: argparse.Namespace, settings: GatewaySettings) -> int:
    """One worker process of ``gateway serve --workers N``, started by its parent."""
    from gateway.web.server import WorkerRole, run_on_event_loop, serve  # noqa: PLC0415

    configure_logging(settings.log.level, settings.log.format, fixed={"worker": args.worker_index})
    role = WorkerRole(
        index=args.worker_index,
        count=args.workers,
        parent_pid=args.worker_of,
        sockets=tuple(socket.socket(fileno=int(fd)) for fd in args.worker_fds.split(",")),
        ready_fd=args.worker_ready_fd,
    )
    run_on_event_loop(serve(settings, worker=role, tune_gc=True), settings.listen.event_loop)
    return 0


def _workers(text: str) -> int:
    try:
        return resolve_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the three-agency demo network."""
    from gateway.demo import run_demo  # noqa: PLC0415 - the demo is not needed to serve
    from gateway.web.server import run_on_event_loop  # noqa: PLC0415

    return run_on_event_loop(
        run_demo(
            directory=Path(args.dir) if args.dir else None,
            port_base=args.port_base,
            scenario=not args.no_scenario,
            once=args.once,
            with_prometheus=args.with_prometheus,
        ),
        "auto",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gateway`` command."""
    parser = argparse.ArgumentParser(
        prog="gateway", description="Interagency secure data-exchange gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[[argparse.Namespace], int],
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=(handler.__doc__ or "").strip().splitlines()[0])
        sub.set_defaults(handler=handler)
        return sub

    keys = commands.add_parser("keys", help="agency keys").add_subparsers(dest="sub", required=True)
    generate = command(keys, "generate", cmd_keys_generate)
    generate.add_argument("--agency", required=True)
    generate.add_argument("--dir", required=True)
    generate.add_argument("--alg", choices=["ed25519", "p256"], default="ed25519")
    generate.add_argument("--passphrase-env", metavar="VAR")
    api_key = command(keys, "api-key", cmd_keys_api_key)
    api_key.add_argument("--key", help="hash this key instead of making a new one")
    log_key = command(keys, "generate-log-key", cmd_keys_generate_log_key)
    log_key.add_argument("--file", required=True, help="where to write it, e.g. KEYDIR/log.pem")
    log_key.add_argument("--passphrase-env", metavar="VAR")
    rotate = command(keys, "rotate-audit-key", cmd_keys_rotate_audit_key)
    rotate.add_argument("--file", required=True, help="the agency's audit.key")

    registry = commands.add_parser("registry", help="the trust registry").add_subparsers(
        dest="sub", required=True
    )
    sign = command(registry, "sign", cmd_registry_sign)
    sign.add_argument("source")
    sign.add_argument("--key", required=True, help="the authority's signing.pem")
    sign.add_argument("--out", required=True)
    sign.add_argument("--passphrase-env", metavar="VAR")

    contracts = commands.add_parser("contracts", help="data-sharing contracts").add_subparsers(
        dest="sub", required=True
    )
    csign = command(contracts, "sign", cmd_contracts_sign)
    csign.add_argument("file")
    csign.add_argument("--agency", required=True)
    csign.add_argument("--key", required=True, help="the agency's signing.pem")
    csign.add_argument("--passphrase-env", metavar="VAR")
    validate = command(contracts, "validate", cmd_contracts_validate)
    validate.add_argument("dir")
    validate.add_argument("--registry", required=True)
    validate.add_argument(
        "--authority-key", help="authority public key (default: authority.jwks.json beside it)"
    )
    schema = command(contracts, "schema", cmd_contracts_schema)
    schema.add_argument("--out")
    ropa = command(contracts, "record-of-processing", cmd_contracts_record_of_processing)
    ropa.add_argument("--dir", required=True, help="a directory of signed contracts")
    ropa.add_argument("--registry", required=True)
    ropa.add_argument(
        "--authority-key", help="authority public key (default: authority.jwks.json beside it)"
    )
    ropa.add_argument(
        "--agency", help="only contracts where this agency is controller (provider) or recipient"
    )
    ropa.add_argument(
        "--role", choices=ROLES, default="any", help="with --agency: which side (default any)"
    )
    ropa.add_argument(
        "--at", type=_instant, metavar="RFC3339", help="evaluate validity then (default now)"
    )
    ropa.add_argument("--format", choices=FORMATS, default="text")

    add_audit_commands(commands, command)

    serve = command(commands, "serve", cmd_serve)
    serve.add_argument("--config", required=True)
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes serving the port: 1 to 64, or 0 or auto for one per CPU "
        "(default: listen.workers in the config, which defaults to 1)",
    )
    # Given by the parent of ``--workers N`` to each worker it starts; not for operators.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-fds", help=argparse.SUPPRESS)
    serve.add_argument("--worker-ready-fd", type=int, help=argparse.SUPPRESS)

    demo = command(commands, "demo", cmd_demo)
    demo.add_argument("--dir", help="where to keep keys, registry, contracts and configs")
    demo.add_argument("--port-base", type=int, default=8100)
    demo.add_argument("--no-scenario", action="store_true", help="set up and serve only")
    demo.add_argument("--once", action="store_true", help="run the scenario, print, exit")
    demo.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run Prometheus (the prometheus binary) on port base + 90, scraping the demo",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

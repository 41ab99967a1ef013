"""Writing a demo network to disk: keys, registry, signed contracts, configs.

Three agencies: ``population-registry`` and ``tax-authority`` provide,
``social-benefits`` consumes (and ``tax-authority`` consumes too). Everything
a real deployment has is here, made with the same commands an operator runs:
the registry is signed by an authority key, every contract by both parties.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from gateway.audit.records import generate_audit_key
from gateway.config import hash_api_key
from gateway.contracts import Contract, sign_contract
from gateway.demo.backends import SUBJECTS
from gateway.keys import AgencyKeys, write_key_dir
from gateway.registry import build_registry_payload, sign_registry

POPULATION: Final = "population-registry"
TAX: Final = "tax-authority"
BENEFITS: Final = "social-benefits"

AGENCY_NAMES: Final = {
    POPULATION: "Population Registry",
    TAX: "Tax Authority",
    BENEFITS: "Social Benefits Office",
}
# Gateways listen on port_base + offset, backends on port_base + 10 + offset.
PORT_OFFSETS: Final = {POPULATION: 1, TAX: 2, BENEFITS: 3}
SERVICES: Final = {POPULATION: "person-basic", TAX: "income-records"}

INCOME_CONTRACT: Final = "benefits-income-2026"
PERSON_CONTRACT: Final = "benefits-person-2026"
TAX_CONTRACT: Final = "tax-person-2026"
EXPIRED_CONTRACT: Final = "benefits-income-2024"


@dataclass(frozen=True)
class DemoAgency:
    """One agency of the demo: where it listens and the files that make it."""

    id: str
    url: str
    config: Path
    keys: Path
    client_key: str | None
    officer_key: str
    backend_port: int | None


def _contract(
    contract_id: str,
    *,
    provider: str,
    consumer: str,
    purpose: tuple[str, str],
    fields: list[str],
    valid: tuple[datetime, datetime],
) -> Contract:
    return Contract.model_validate(
        {
            "id": contract_id,
            "version": 1,
            "provider": provider,
            "consumer": consumer,
            "service": SERVICES[provider],
            "purposes": [{"id": purpose[0], "legal_basis": purpose[1]}],
            "fields": fields,
            "subject_field": "national_id",
            "requires_end_user": True,
            "valid_from": valid[0],
            "valid_until": valid[1],
            "rate_limit": {"requests": 600, "per_seconds": 60},
            "max_request_bytes": 65536,
            "retention_days": 30,
            "status": "active",
        }
    )


def demo_contracts(now: datetime) -> list[Contract]:
    """The demo's contracts, unsigned: three in force and one that has expired."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    current = (today - timedelta(days=30), today + timedelta(days=365))
    benefit = ("benefit-eligibility", "Social Security Act s.12; GDPR Art. 6(1)(e)")
    return [
        _contract(
            INCOME_CONTRACT,
            provider=TAX,
            consumer=BENEFITS,
            purpose=benefit,
            fields=["national_id", "year", "taxable_income"],
            valid=current,
        ),
        _contract(
            PERSON_CONTRACT,
            provider=POPULATION,
            consumer=BENEFITS,
            purpose=benefit,
            fields=["national_id", "birth_date", "municipality"],
            valid=current,
        ),
        _contract(
            TAX_CONTRACT,
            provider=POPULATION,
            consumer=TAX,
            purpose=("tax-assessment", "Taxation Act s.4; GDPR Art. 6(1)(c)"),
            fields=["national_id", "name", "address"],
            valid=current,
        ),
        _contract(
            EXPIRED_CONTRACT,
            provider=TAX,
            consumer=BENEFITS,
            purpose=benefit,
            fields=["national_id", "year", "taxable_income"],
            valid=(
                datetime(2024, 1, 1, tzinfo=UTC),
                datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
            ),
        ),
    ]


def _write_yaml(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def build_network(directory: Path, port_base: int, now: datetime) -> dict[str, Any]:
    """Write a complete demo network into ``directory``; return the ``demo.json`` document."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = write_key_dir(directory / "authority", log_key=False)
    shutil.copy(directory / "authority" / "jwks.json", directory / "authority.jwks.json")
    keys: dict[str, AgencyKeys] = {}
    for agency in AGENCY_NAMES:
        keys[agency] = write_key_dir(directory / "keys" / agency)
        generate_audit_key(directory / "keys" / agency / "audit.key")
    # A key social-benefits once used and has since removed from the registry.
    write_key_dir(directory / "keys" / "social-benefits-revoked")

    _write_yaml(
        directory / "registry.yaml",
        {
            "iss": "registry-authority",
            "serial": 1,
            "valid_days": 30,
            "agencies": [
                {
                    "id": agency,
                    "name": name,
                    "gateway_url": f"http://127.0.0.1:{port_base + PORT_OFFSETS[agency]}",
                    "status": "active",
                    "jwks": f"keys/{agency}/jwks.json",
                }
                for agency, name in AGENCY_NAMES.items()
            ],
        },
    )
    payload = build_registry_payload(directory / "registry.yaml", int(now.timestamp()))
    (directory / "registry.jws").write_text(
        sign_registry(payload, authority.signing) + "\n", encoding="ascii"
    )

    for contract in demo_contracts(now):
        signed = sign_contract(contract, contract.provider, keys[contract.provider].signing)
        signed = sign_contract(signed, contract.consumer, keys[contract.consumer].signing)
        for party in contract.parties:
            _write_yaml(
                directory / party / "contracts" / f"{contract.id}.yaml",
                signed.model_dump(mode="json"),
            )

    clients = {
        BENEFITS: {
            "caseworker-app": [INCOME_CONTRACT, PERSON_CONTRACT, EXPIRED_CONTRACT],
            "reporting-batch": [INCOME_CONTRACT],
        },
        TAX: {"assessment-app": [TAX_CONTRACT]},
        POPULATION: {},
    }
    agencies: dict[str, Any] = {}
    for agency in AGENCY_NAMES:
        port = port_base + PORT_OFFSETS[agency]
        client_keys = {client: secrets.token_urlsafe(24) for client in clients[agency]}
        officer_key = secrets.token_urlsafe(24)
        config: dict[str, Any] = {
            "agency": agency,
            "listen": {"host": "127.0.0.1", "port": port},
            "public_url": f"http://127.0.0.1:{port}",
            "keys": {"dir": f"../keys/{agency}"},
            "registry": {
                "path": "../registry.jws",
                "authority_key": "../authority.jwks.json",
                "reload_seconds": 1,
            },
            "contracts": {"dir": "contracts", "reload_seconds": 1},
            "services": {},
            "clients": {
                client: {"key_sha256": hash_api_key(key), "contracts": clients[agency][client]}
                for client, key in client_keys.items()
            },
            "officers": {"privacy-office": {"key_sha256": hash_api_key(officer_key)}},
            "audit": {"store": "sqlite:audit.db"},
            "log": {"level": "info", "format": "console"},
        }
        backend_port = None
        if agency in SERVICES:
            backend_port = port_base + 10 + PORT_OFFSETS[agency]
            config["services"] = {
                SERVICES[agency]: {
                    "backend_url": f"http://127.0.0.1:{backend_port}/{SERVICES[agency]}",
                    "timeout_seconds": 5,
                }
            }
        (directory / agency / "contracts").mkdir(parents=True, exist_ok=True)
        _write_yaml(directory / agency / "gateway.yaml", config)
        agencies[agency] = {
            "url": f"http://127.0.0.1:{port}",
            "config": f"{agency}/gateway.yaml",
            "keys": f"keys/{agency}",
            "client_key": next(iter(client_keys.values()), None),
            "client_keys": client_keys,
            "officer_key": officer_key,
            "backend_port": backend_port,
        }
    document = {
        "agencies": agencies,
        "contracts": {
            "income": INCOME_CONTRACT,
            "person": PERSON_CONTRACT,
            "tax": TAX_CONTRACT,
            "expired": EXPIRED_CONTRACT,
        },
        "subjects": list(SUBJECTS[:5]),
        "port_base": port_base,
    }
    (directory / "demo.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document

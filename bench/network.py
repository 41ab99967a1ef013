"""The folder the exchange benchmark's gateways run from, and its variants.

:func:`gateway.demo.network.build_network` writes a demo network (authority,
signed registry, agency keys, audit keys, configs). The benchmark keeps two
of its agencies, the consumer ``social-benefits`` and the provider
``tax-authority``, and adds with the project's own signing code:

- the bench contract ``bench-income`` (signed by both parties): the bench
  record's fields, a rate limit no run reaches, requests up to the protocol's
  compact-object bound, so no run is refused for a limit meant for production;
- filler contracts, each between the same two agencies but for a service of
  its own (``filler-svc-NNNNN``), so a set of 10, 1,000 or 10,000 contracts
  changes what the gateways load and index but not which contract fits; half
  of their ids sort before the bench contract's and half after;
- one client of the consumer, ``bench-client``, allowed only the bench
  contract.

Each variant of a run (contracts loaded, body limits, audit database) is a
config file of its own beside the agency's ``gateway.yaml``, so the gateways
are restarted with ``gateway serve --config`` on another file, never changed
under a running process. Everything else stays as shipped: the embedded
SQLite audit store (WAL, ``synchronous=FULL``), JSON logs at ``info``, the
default limits, reload intervals and checkpoint policy.
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import Any, Final

import yaml

from bench.payloads import RECORD_FIELDS
from gateway.config import hash_api_key
from gateway.contracts import Contract, sign_contract
from gateway.demo.network import BENEFITS, PORT_OFFSETS, SERVICES, TAX, build_network
from gateway.jose import MAX_COMPACT_BYTES
from gateway.keys import AgencyKeys, load_agency_keys

CONSUMER: Final = BENEFITS
PROVIDER: Final = TAX
SERVICE: Final = SERVICES[TAX]  # income-records
CONTRACT: Final = "bench-income"
CLIENT: Final = "bench-client"
PURPOSE: Final = "benefit-eligibility"
LEGAL_BASIS: Final = "Social Security Act s.12; GDPR Art. 6(1)(e)"
END_USER: Final = "caseworker-17"

# Offsets from the port base of the plain processes (the gateways use build_network's).
BACKEND_OFFSET: Final = 20
PROXY_OFFSETS: Final = (21, 22)

try:  # libyaml's dumper when PyYAML was built with it: writing 10,000 files is 4x faster
    _DUMPER: Any = yaml.CSafeDumper
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _DUMPER = yaml.SafeDumper


@dataclass(frozen=True)
class Variant:
    """What differs between the gateways' configs of two parts of a run."""

    contracts: int = 10
    max_body_bytes: int | None = None  # None: the shipped default
    audit_db: str = "audit.db"
    workers: int = 1

    @property
    def tag(self) -> str:
        """A file-name-safe name of the variant."""
        body = "default" if self.max_body_bytes is None else f"{self.max_body_bytes}"
        db = self.audit_db.removesuffix(".db")
        return f"c{self.contracts}-b{body}-{db}"


@dataclass(frozen=True)
class BenchNetwork:
    """The folder, ports and secrets of one benchmark run."""

    root: Path
    port_base: int
    api_key: str
    keys: dict[str, AgencyKeys]
    base_config: dict[str, dict[str, Any]]

    def agency_dir(self, agency: str) -> Path:
        """The agency's folder (its configs, contract sets and audit databases)."""
        return self.root / agency

    def gateway_port(self, agency: str) -> int:
        """Where the agency's gateway listens."""
        return self.port_base + PORT_OFFSETS[agency]

    @property
    def backend_port(self) -> int:
        """Where the bench backend listens."""
        return self.port_base + BACKEND_OFFSET

    @property
    def proxy_ports(self) -> tuple[int, int]:
        """The two proxy hops of scenario B, in the order a request passes them."""
        return (self.port_base + PROXY_OFFSETS[0], self.port_base + PROXY_OFFSETS[1])

    @property
    def exchange_url(self) -> str:
        """The client's URL at the consumer gateway."""
        port = self.gateway_port(CONSUMER)
        return f"http://127.0.0.1:{port}/v1/exchange/{PROVIDER}/{SERVICE}"

    @property
    def service_url(self) -> str:
        """The service's URL at the provider gateway, where the consumer gateway sends."""
        return f"http://127.0.0.1:{self.gateway_port(PROVIDER)}/v1/services/{SERVICE}"

    @property
    def client_headers(self) -> dict[str, str]:
        """The client's headers, as in the README's curl tour (sent in A and B too)."""
        return {
            "Authorization": f"Bearer {self.api_key}",
            "X-Purpose": PURPOSE,
            "X-End-User": END_USER,
        }

    def contract_dir(self, agency: str, count: int) -> Path:
        """The folder of the set of ``count`` contracts, as the agency loads it."""
        return self.agency_dir(agency) / f"contracts-{count}"

    def config_path(self, agency: str, variant: Variant) -> Path:
        """The config file of ``variant`` (written by :func:`write_configs`)."""
        return self.agency_dir(agency) / f"bench-{variant.tag}.yaml"


def _bench_contract(contract_id: str, service: str, now: datetime) -> Contract:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return Contract.model_validate(
        {
            "id": contract_id,
            "version": 1,
            "provider": PROVIDER,
            "consumer": CONSUMER,
            "service": service,
            "purposes": [{"id": PURPOSE, "legal_basis": LEGAL_BASIS}],
            "fields": list(RECORD_FIELDS),
            "subject_field": "national_id",
            "requires_end_user": True,
            "valid_from": today - timedelta(days=30),
            "valid_until": today + timedelta(days=365),
            "rate_limit": {"requests": 1_000_000, "per_seconds": 1},
            "max_request_bytes": MAX_COMPACT_BYTES,
            "retention_days": 30,
            "status": "active",
        }
    )


def _signed_yaml(contract: Contract, keys: dict[str, AgencyKeys]) -> str:
    signed = sign_contract(contract, PROVIDER, keys[PROVIDER].signing)
    signed = sign_contract(signed, CONSUMER, keys[CONSUMER].signing)
    text: str = yaml.dump(signed.model_dump(mode="json"), Dumper=_DUMPER, sort_keys=False)
    return text


def build(root: Path, port_base: int, now: datetime) -> BenchNetwork:
    """Write the demo network into ``root`` and the bench contract into ``contracts-1``."""
    build_network(root, port_base, now)
    keys = {agency: load_agency_keys(root / "keys" / agency) for agency in (CONSUMER, PROVIDER)}
    base: dict[str, dict[str, Any]] = {}
    for agency in (CONSUMER, PROVIDER):
        loaded = yaml.safe_load((root / agency / "gateway.yaml").read_text("utf-8"))
        base[agency] = loaded
    network = BenchNetwork(
        root=root,
        port_base=port_base,
        api_key=secrets.token_urlsafe(24),
        keys=keys,
        base_config=base,
    )
    pool = root / "contract-pool"
    pool.mkdir()
    (pool / f"{CONTRACT}.yaml").write_text(
        _signed_yaml(_bench_contract(CONTRACT, SERVICE, now), keys), encoding="utf-8"
    )
    return network


def _write_fillers(root: Path, numbers: list[int], now: datetime) -> None:
    # In a worker process: the keys are read from the network's folder, not sent over.
    keys = {agency: load_agency_keys(root / "keys" / agency) for agency in (CONSUMER, PROVIDER)}
    for number in numbers:
        contract = _bench_contract(_filler_id(number), f"filler-svc-{number:05d}", now)
        path = root / "contract-pool" / f"{_filler_id(number)}.yaml"
        path.write_text(_signed_yaml(contract, keys), encoding="utf-8")


def _filler_id(number: int) -> str:
    # Half the fillers sort before the bench contract and half after it: the set is
    # kept in id order, so any scan of it passes half of them, as for a contract
    # picked at random, not none (as if the bench contract came first) or all.
    return f"{'a' if number % 2 else 'z'}-filler-{number:05d}"


def ensure_contract_set(network: BenchNetwork, count: int, now: datetime) -> float:
    """Make ``contracts-{count}`` in both agencies' folders; seconds spent signing.

    The set is the bench contract and ``count - 1`` fillers, signed once into a
    pool by both parties and hard-linked into each set's folder.
    """
    if count < 1:
        raise ValueError("a contract set holds the bench contract at least")
    pool = network.root / "contract-pool"
    started = time.perf_counter()
    missing = [n for n in range(1, count) if not (pool / f"{_filler_id(n)}.yaml").exists()]
    if missing:
        # Nothing else runs while the set is made: one signer per core (10,000
        # fillers, each signed by both parties, take 10-18 s of CPU on one).
        workers = min(os.cpu_count() or 1, len(missing))
        shares = [missing[at::workers] for at in range(workers)]
        with ProcessPoolExecutor(workers) as executor:
            list(executor.map(_write_fillers, repeat(network.root), shares, repeat(now)))
    signing = time.perf_counter() - started
    names = [f"{CONTRACT}.yaml", *(f"{_filler_id(n)}.yaml" for n in range(1, count))]
    for agency in (CONSUMER, PROVIDER):
        folder = network.contract_dir(agency, count)
        if folder.exists():
            continue
        folder.mkdir(parents=True)
        for name in names:
            os.link(pool / name, folder / name)
    return signing


def write_configs(network: BenchNetwork, variant: Variant) -> dict[str, Path]:
    """The two gateways' config files of ``variant``; their paths by agency."""
    paths = {}
    for agency in (CONSUMER, PROVIDER):
        config = dict(network.base_config[agency])
        config["registry"] = {
            key: value for key, value in config["registry"].items() if key != "reload_seconds"
        }
        config["contracts"] = {"dir": network.contract_dir(agency, variant.contracts).name}
        config["audit"] = {"store": f"sqlite:{variant.audit_db}"}
        config["log"] = {"level": "info", "format": "json"}
        if variant.max_body_bytes is not None:
            config["limits"] = {"max_body_bytes": variant.max_body_bytes}
        if agency == CONSUMER:
            config["clients"] = {
                CLIENT: {"key_sha256": hash_api_key(network.api_key), "contracts": [CONTRACT]}
            }
        else:
            config["clients"] = {}
            config["services"] = {
                SERVICE: {
                    "backend_url": f"http://127.0.0.1:{network.backend_port}/{SERVICE}",
                    "timeout_seconds": 30,
                }
            }
        path = network.config_path(agency, variant)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        paths[agency] = path
    return paths

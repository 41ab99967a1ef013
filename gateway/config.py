"""Gateway settings: the only reader of ``gateway.yaml`` and ``GATEWAY_...`` variables.

Environment variables override the file: ``GATEWAY_LISTEN__PORT=9000``
sets ``listen.port`` (``__`` separates levels). Relative paths are resolved
against the folder of the config file. An invalid config raises one
:class:`~gateway.errors.SetupError` naming the field and the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import SetupError
from gateway.keys import LOG_KEY_FILE
from gateway.yamlfiles import load_strict_yaml, yaml_problem

ENV_PREFIX: Final = "GATEWAY_"
MAX_CONFIG_BYTES: Final = 1024 * 1024

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# More worker processes than this only contend for the audit store's write lock.
MAX_WORKERS: Final = 64


class ListenSettings(_Section):
    """Where the gateway listens, and how many processes serve that port."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # 1: one process (the default); 0 or "auto": one per CPU (``gateway serve --workers``).
    workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] | Literal["auto"] = 1
    # auto: uvloop where it is installed (it is a dependency on Linux and macOS), else asyncio's.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class KeySettings(_Section):
    """The agency's private keys."""

    dir: Path
    passphrase_env: str | None = None
    previous_dirs: tuple[Path, ...] = ()
    audit_key: Path | None = None
    log_key: Path | None = None

    def passphrase(self) -> bytes | None:
        """The passphrase from the named environment variable, if one is configured."""
        if self.passphrase_env is None:
            return None
        value = os.environ.get(self.passphrase_env)
        if not value:
            raise SetupError(
                "keys.passphrase_env", f"environment variable {self.passphrase_env} is not set"
            )
        return value.encode("utf-8")


class RegistrySettings(_Section):
    """The signed trust registry and the authority that signs it."""

    path: Path
    authority_key: Path
    reload_seconds: float = Field(default=5.0, gt=0)


class ContractSettings(_Section):
    """The directory of signed contracts."""

    dir: Path
    reload_seconds: float = Field(default=5.0, gt=0)


class ServiceSettings(_Section):
    """One service this agency provides, backed by one backend URL."""

    backend_url: AnyHttpUrl
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class ClientSettings(_Section):
    """One of the agency's own systems: its API key hash and allowed contracts."""

    key_sha256: Sha256Hex
    contracts: tuple[str, ...] = ()


class OfficerSettings(_Section):
    """A privacy officer allowed to query the audit log."""

    key_sha256: Sha256Hex


class AuditSettings(_Section):
    """Where audit records are stored, when checkpoints are signed, how long bytes are kept."""

    store: str = "sqlite:audit.db"
    checkpoint_every_records: int = Field(default=1000, ge=1)
    checkpoint_every_seconds: float = Field(default=10.0, gt=0)
    # After this many days a record's bytes are deleted; its leaf hash stays in the tree.
    retention_days: int = Field(default=3650, ge=1, le=36_500)
    retention_by_contract: dict[str, Annotated[int, Field(ge=1, le=36_500)]] = {}
    retention_check_seconds: float = Field(default=3600.0, gt=0)

    def retention_for(self, contract: str | None) -> int:
        """Days a record about ``contract`` (None: no contract) keeps its bytes."""
        if contract is None:
            return self.retention_days
        return self.retention_by_contract.get(contract, self.retention_days)


class LimitSettings(_Section):
    """Denial-of-service bounds."""

    # Protocol 3.3 default: 1 MiB of JWE bytes.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_in_flight: int = Field(default=256, ge=1)
    replay_cache_size: int = Field(default=1_000_000, ge=1000)
    upstream_timeout_seconds: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)


class StateSettings(_Section):
    """Where replay ids and rate-limit buckets live (``gateway.state``).

    ``auto``: in memory for one process on a SQLite audit store, a SQLite file
    beside the audit store for several (``--workers``), the audit store's
    database when it is PostgreSQL. Or ``memory``, ``sqlite:PATH`` or a
    ``postgresql://`` URL.
    """

    store: str = "auto"
    purge_seconds: float = Field(default=1.0, gt=0, le=60)

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        scheme = value.partition(":")[0]
        if value not in ("auto", "memory") and scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("state.store must be auto, memory, sqlite:PATH or postgresql://...")
        if scheme == "sqlite" and not value.partition(":")[2].lstrip("/"):
            raise ValueError("the sqlite URL names no file")
        return value


class LogSettings(_Section):
    """Log level and format."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class GatewaySettings(BaseSettings):
    """Everything a gateway needs to start, validated once."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    agency: Identifier
    listen: ListenSettings = ListenSettings()
    public_url: AnyHttpUrl
    keys: KeySettings
    registry: RegistrySettings
    contracts: ContractSettings
    services: dict[Identifier, ServiceSettings] = {}
    clients: dict[Identifier, ClientSettings] = {}
    officers: dict[Identifier, OfficerSettings] = {}
    audit: AuditSettings = AuditSettings()
    limits: LimitSettings = LimitSettings()
    state: StateSettings = StateSettings()
    log: LogSettings = LogSettings()
    base_dir: Path = Path()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the file's values (passed as init values)."""
        return (env_settings, init_settings)

    @field_validator("public_url")
    @classmethod
    def _no_path_query(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.query or value.fragment:
            raise ValueError("public_url must not have a query or fragment")
        return value

    @model_validator(mode="after")
    def _resolve_paths(self) -> GatewaySettings:
        base = self.base_dir

        def resolve(path: Path) -> Path:
            return path if path.is_absolute() else base / path

        keys = self.keys.model_copy(
            update={
                "dir": resolve(self.keys.dir),
                "previous_dirs": tuple(resolve(p) for p in self.keys.previous_dirs),
                "audit_key": resolve(self.keys.audit_key or Path(self.keys.dir) / "audit.key"),
                "log_key": resolve(self.keys.log_key or Path(self.keys.dir) / LOG_KEY_FILE),
            }
        )
        registry = self.registry.model_copy(
            update={
                "path": resolve(self.registry.path),
                "authority_key": resolve(self.registry.authority_key),
            }
        )
        contracts = self.contracts.model_copy(update={"dir": resolve(self.contracts.dir)})
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "contracts", contracts)
        return self

    def client_for_key(self, api_key: str) -> str | None:
        """The client id whose configured hash matches ``api_key`` (constant-time compare)."""
        return _holder_of(api_key, {name: c.key_sha256 for name, c in self.clients.items()})

    def officer_for_key(self, api_key: str) -> str | None:
        """The officer id whose configured hash matches ``api_key``."""
        return _holder_of(api_key, {name: o.key_sha256 for name, o in self.officers.items()})


def _holder_of(api_key: str, hashes: dict[str, str]) -> str | None:
    # Every hash is compared, so the time taken does not tell which one matched.
    digest = hash_api_key(api_key)
    found = None
    for holder, expected in hashes.items():
        if hmac.compare_digest(digest, expected):
            found = holder
    return found


def hash_api_key(api_key: str) -> str:
    """The SHA-256 hex digest stored in config for a client or officer API key."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def load_settings(path: Path) -> GatewaySettings:
    """Read, override from the environment, and validate ``path``; ``SetupError`` if bad."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SetupError(str(path), f"cannot read the config file ({exc.strerror})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise SetupError(str(path), "the config file is too large")
    try:
        data: Any = load_strict_yaml(raw)
    except yaml.YAMLError as exc:
        raise SetupError(str(path), yaml_problem(exc)) from exc
    if not isinstance(data, dict):
        raise SetupError(str(path), "the config file must be a YAML mapping")
    data.setdefault("base_dir", str(path.resolve().parent))
    try:
        return GatewaySettings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise SetupError(str(path), first["msg"], field=field) from exc

"""Gateway settings: the YAML file, environment overrides, path resolution, errors naming fields."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import (
    MAX_CONFIG_BYTES,
    GatewaySettings,
    hash_api_key,
    load_settings,
)
from gateway.errors import SetupError

CLIENT_KEY = "client-secret-key"
OFFICER_KEY = "officer-secret-key"

MINIMAL: dict[str, Any] = {
    "agency": "tax-authority",
    "public_url": "https://gw.tax.example",
    "keys": {"dir": "keys"},
    "registry": {"path": "registry/registry.jws", "authority_key": "registry/authority.pem"},
    "contracts": {"dir": "contracts"},
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GATEWAY_ variable of the test runner's environment leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def write_config(folder: Path, data: Any, name: str = "gateway.yaml") -> Path:
    """Write ``data`` as YAML into ``folder`` and return the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def config_with(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level ``changes``."""
    return {**MINIMAL, **changes}


def setup_error(path: Path) -> SetupError:
    """The SetupError raised by load_settings(path)."""
    with pytest.raises(SetupError) as info:
        load_settings(path)
    return info.value


class TestDefaults:
    """A minimal file gives the documented defaults."""

    def test_minimal(self, tmp_path: Path) -> None:
        """Only the required sections: every other setting has its default."""
        settings = load_settings(write_config(tmp_path, MINIMAL))
        assert settings.agency == "tax-authority"
        assert str(settings.public_url) == "https://gw.tax.example/"
        assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
        assert settings.audit.store == "sqlite:audit.db"
        assert settings.limits.max_body_bytes == 1024 * 1024
        assert settings.limits.max_in_flight == 256
        assert settings.limits.replay_cache_size == 1_000_000
        assert (settings.log.level, settings.log.format) == ("info", "json")
        assert settings.services == {}
        assert settings.clients == {}
        assert settings.officers == {}
        assert settings.keys.passphrase_env is None
        assert settings.keys.passphrase() is None
        assert settings.registry.reload_seconds == 5.0
        assert settings.contracts.reload_seconds == 5.0

    def test_frozen(self, tmp_path: Path) -> None:
        """Settings cannot be changed after loading."""
        settings = load_settings(write_config(tmp_path, MINIMAL))
        with pytest.raises(ValueError, match="frozen"):
            settings.agency = "other"  # type: ignore[misc]

    def test_services_clients_officers(self, tmp_path: Path) -> None:
        """Services, clients and officers parse with their members."""
        data = config_with(
            services={"income-records": {"backend_url": "http://127.0.0.1:9001/records"}},
            clients={
                "caseworker-app": {
                    "key_sha256": hash_api_key(CLIENT_KEY),
                    "contracts": ["benefits-income-2026"],
                }
            },
            officers={"dpo-1": {"key_sha256": hash_api_key(OFFICER_KEY)}},
        )
        settings = load_settings(write_config(tmp_path, data))
        service = settings.services["income-records"]
        assert str(service.backend_url) == "http://127.0.0.1:9001/records"
        assert service.timeout_seconds == 10.0
        assert settings.clients["caseworker-app"].contracts == ("benefits-income-2026",)


class TestPaths:
    """Relative paths are resolved against the config file's folder, not the cwd."""

    def test_relative_resolved(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every path setting is joined to the file's folder."""
        folder = tmp_path / "etc" / "gateway"
        data = config_with(keys={"dir": "keys", "previous_dirs": ["old-keys"]})
        path = write_config(folder, data)
        monkeypatch.chdir(tmp_path)
        settings = load_settings(path)
        base = folder.resolve()
        assert settings.keys.dir == base / "keys"
        assert settings.keys.previous_dirs == (base / "old-keys",)
        assert settings.keys.audit_key == base / "keys" / "audit.key"
        assert settings.registry.path == base / "registry" / "registry.jws"
        assert settings.registry.authority_key == base / "registry" / "authority.pem"
        assert settings.contracts.dir == base / "contracts"
        assert settings.base_dir == base

    def test_relative_config_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A config path given relative to the cwd still resolves to an absolute folder."""
        write_config(tmp_path / "conf", MINIMAL)
        monkeypatch.chdir(tmp_path)
        settings = load_settings(Path("conf/gateway.yaml"))
        assert settings.keys.dir == (tmp_path / "conf" / "keys").resolve()
        assert settings.keys.dir.is_absolute()

    def test_absolute_kept(self, tmp_path: Path) -> None:
        """Absolute paths are used as written."""
        data = config_with(
            keys={"dir": "/srv/keys", "audit_key": "/srv/audit/audit.key"},
            contracts={"dir": "/srv/contracts"},
        )
        settings = load_settings(write_config(tmp_path, data))
        assert settings.keys.dir == Path("/srv/keys")
        assert settings.keys.audit_key == Path("/srv/audit/audit.key")
        assert settings.contracts.dir == Path("/srv/contracts")

    def test_explicit_relative_audit_key(self, tmp_path: Path) -> None:
        """An explicit relative audit_key is resolved against the file's folder."""
        data = config_with(keys={"dir": "keys", "audit_key": "secrets/audit.key"})
        settings = load_settings(write_config(tmp_path, data))
        assert settings.keys.audit_key == tmp_path.resolve() / "secrets" / "audit.key"


class TestEnvironment:
    """GATEWAY_ variables override the file, ``__`` separating levels."""

    def test_listen_port(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """GATEWAY_LISTEN__PORT overrides listen.port; the file's host is kept."""
        path = write_config(tmp_path, config_with(listen={"host": "192.0.2.10", "port": 8000}))
        monkeypatch.setenv("GATEWAY_LISTEN__PORT", "9000")
        settings = load_settings(path)
        assert settings.listen.port == 9000
        assert settings.listen.host == "192.0.2.10"

    def test_top_level(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A top-level setting is overridden too."""
        monkeypatch.setenv("GATEWAY_LOG__LEVEL", "debug")
        monkeypatch.setenv("GATEWAY_AGENCY", "social-benefits")
        settings = load_settings(write_config(tmp_path, MINIMAL))
        assert settings.log.level == "debug"
        assert settings.agency == "social-benefits"

    def test_invalid_override_names_field(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An invalid environment value is refused naming the field it sets."""
        monkeypatch.setenv("GATEWAY_LISTEN__PORT", "not-a-port")
        error = setup_error(write_config(tmp_path, MINIMAL))
        assert error.field == "listen.port"

    def test_passphrase_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """keys.passphrase_env names the variable holding the key passphrase."""
        data = config_with(keys={"dir": "keys", "passphrase_env": "TAX_KEY_PASSPHRASE"})
        settings = load_settings(write_config(tmp_path, data))
        monkeypatch.setenv("TAX_KEY_PASSPHRASE", "s3cret")
        assert settings.keys.passphrase() == b"s3cret"

    @pytest.mark.parametrize("value", [None, ""])
    def test_passphrase_env_unset(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        """A configured passphrase variable that is unset or empty is a SetupError naming it."""
        data = config_with(keys={"dir": "keys", "passphrase_env": "TAX_KEY_PASSPHRASE"})
        settings = load_settings(write_config(tmp_path, data))
        if value is None:
            monkeypatch.delenv("TAX_KEY_PASSPHRASE", raising=False)
        else:
            monkeypatch.setenv("TAX_KEY_PASSPHRASE", value)
        with pytest.raises(SetupError, match="TAX_KEY_PASSPHRASE is not set") as info:
            settings.keys.passphrase()
        assert info.value.source == "keys.passphrase_env"


class TestInvalid:
    """Invalid settings: one SetupError naming the file, the field and the reason."""

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"listen": {"port": 70000}}, "listen.port"),
            ({"listen": {"port": -1}}, "listen.port"),
            ({"listen": {"port": "http"}}, "listen.port"),
            ({"listen": {"event_loop": "trio"}}, "listen.event_loop"),
            ({"agency": "Tax_Authority"}, "agency"),
            ({"agency": "x"}, "agency"),
            ({"public_url": "ftp://gw.example"}, "public_url"),
            ({"public_url": "https://gw.example/?q=1"}, "public_url"),
            ({"public_url": "https://gw.example/#top"}, "public_url"),
            (
                {"clients": {"caseworker-app": {"key_sha256": "abc"}}},
                "clients.caseworker-app.key_sha256",
            ),
            (
                {"clients": {"caseworker-app": {"key_sha256": "A" * 64}}},
                "clients.caseworker-app.key_sha256",
            ),
            ({"officers": {"dpo-1": {}}}, "officers.dpo-1.key_sha256"),
            (
                {"services": {"records": {"backend_url": "not a url"}}},
                "services.records.backend_url",
            ),
            (
                {"services": {"records": {"backend_url": "http://b", "timeout_seconds": 0}}},
                "services.records.timeout_seconds",
            ),
            ({"limits": {"max_body_bytes": 10}}, "limits.max_body_bytes"),
            ({"limits": {"replay_cache_size": 5}}, "limits.replay_cache_size"),
            ({"log": {"level": "verbose"}}, "log.level"),
            ({"registry": {"path": "r.jws"}}, "registry.authority_key"),
            (
                {"registry": {"path": "r", "authority_key": "a", "reload_seconds": 0}},
                "registry.reload_seconds",
            ),
            ({"keys": {}}, "keys.dir"),
        ],
    )
    def test_field_named(self, tmp_path: Path, changes: dict[str, Any], field: str) -> None:
        """Each invalid value is reported with its dotted field path."""
        path = write_config(tmp_path, config_with(**changes))
        error = setup_error(path)
        assert error.field == field
        assert error.source == str(path)
        assert field in str(error)

    def test_invalid_client_id(self, tmp_path: Path) -> None:
        """A client id that is not an identifier is refused under clients."""
        data = config_with(clients={"x": {"key_sha256": hash_api_key(CLIENT_KEY)}})
        error = setup_error(write_config(tmp_path, data))
        assert error.field is not None
        assert error.field.startswith("clients.x")

    @pytest.mark.parametrize("missing", ["agency", "public_url", "keys", "registry", "contracts"])
    def test_required(self, tmp_path: Path, missing: str) -> None:
        """Each required top-level section is named when missing."""
        data = {k: v for k, v in MINIMAL.items() if k != missing}
        assert setup_error(write_config(tmp_path, data)).field == missing

    @pytest.mark.parametrize(
        ("changes", "field"),
        [({"bogus": 1}, "bogus"), ({"listen": {"bogus": 1}}, "listen.bogus")],
    )
    def test_unknown_key(self, tmp_path: Path, changes: dict[str, Any], field: str) -> None:
        """An unknown key (a typo) is refused, not ignored."""
        error = setup_error(write_config(tmp_path, config_with(**changes)))
        assert error.field == field

    @pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n", ""])
    def test_not_a_mapping(self, tmp_path: Path, content: str) -> None:
        """A YAML document that is not a mapping (or empty) is refused."""
        path = tmp_path / "gateway.yaml"
        path.write_text(content)
        error = setup_error(path)
        assert error.reason == "the config file must be a YAML mapping"

    def test_invalid_yaml(self, tmp_path: Path) -> None:
        """Unparsable YAML is refused naming the file."""
        path = tmp_path / "gateway.yaml"
        path.write_text("agency: [unclosed\n")
        error = setup_error(path)
        assert error.reason.startswith("not valid YAML")
        assert error.source == str(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is refused naming it."""
        path = tmp_path / "absent.yaml"
        error = setup_error(path)
        assert "cannot read the config file" in error.reason
        assert error.source == str(path)

    def test_too_large(self, tmp_path: Path) -> None:
        """A file above MAX_CONFIG_BYTES is refused before parsing."""
        path = tmp_path / "gateway.yaml"
        path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
        assert setup_error(path).reason == "the config file is too large"

    def test_duplicate_key_refused(self, tmp_path: Path) -> None:
        """A key written twice (e.g. two clients: blocks) is refused, not silently merged."""
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(MINIMAL) + "agency: social-benefits\n")
        setup_error(path)


class TestApiKeys:
    """Client and officer API keys are matched by their SHA-256 hash."""

    @pytest.fixture
    def settings(self, tmp_path: Path) -> GatewaySettings:
        data = config_with(
            clients={
                "caseworker-app": {"key_sha256": hash_api_key(CLIENT_KEY)},
                "batch-job": {"key_sha256": hash_api_key("batch-key")},
            },
            officers={"dpo-1": {"key_sha256": hash_api_key(OFFICER_KEY)}},
        )
        return load_settings(write_config(tmp_path, data))

    def test_hash_api_key(self) -> None:
        """hash_api_key is the SHA-256 hex digest of the UTF-8 key."""
        assert hash_api_key("ключ") == hashlib.sha256("ключ".encode()).hexdigest()
        assert len(hash_api_key("")) == 64

    def test_client_for_key(self, settings: GatewaySettings) -> None:
        """Each client's key finds that client; an unknown key finds none."""
        assert settings.client_for_key(CLIENT_KEY) == "caseworker-app"
        assert settings.client_for_key("batch-key") == "batch-job"
        assert settings.client_for_key("wrong") is None
        assert settings.client_for_key(hash_api_key(CLIENT_KEY)) is None  # the hash is not a key

    def test_officer_for_key(self, settings: GatewaySettings) -> None:
        """Officer keys and client keys are separate."""
        assert settings.officer_for_key(OFFICER_KEY) == "dpo-1"
        assert settings.officer_for_key(CLIENT_KEY) is None
        assert settings.client_for_key(OFFICER_KEY) is None

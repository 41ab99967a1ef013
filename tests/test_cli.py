"""The ``gateway`` command, run as an operator runs it: ``python -m gateway.cli ...``.

Keys, API keys, the registry and contracts are made and checked with the
command itself; mistakes the operator can fix are reported as one line on
stderr with exit status 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.demo.network import BENEFITS, TAX, build_network
from gateway.errors import SetupError
from gateway.keys import load_private_key, load_public_key_file, thumbprint
from gateway.observability import configure_logging
from gateway.registry import verify_registry
from tests.conftest import free_port_base

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Result:
    """What a run of the command left: exit status, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def gateway(*args: str | Path, env: dict[str, str] | None = None, process: bool = False) -> Result:
    """Run the ``gateway`` command with ``args``; never raises on a non-zero exit.

    With ``process`` it runs as the operator runs it, ``python -m gateway.cli``
    in a subprocess (so a traceback would show on stderr); otherwise
    ``gateway.cli.main`` runs in this process with its output captured, which
    is the same code path without half a second of interpreter start-up.
    """
    argv = [str(arg) for arg in args]
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, **(env or {})},
        )
        return Result(done.returncode, done.stdout, done.stderr)
    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        configure_logging("warning", "json")  # `serve` may have reconfigured it
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit 1, no traceback, one line on stderr naming every ``needle``."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


class TestKeys:
    """``gateway keys generate`` and ``gateway keys api-key``."""

    @pytest.mark.parametrize(("alg", "sig_alg"), [("ed25519", "EdDSA"), ("p256", "ES256")])
    def test_generate(self, tmp_path: Path, alg: str, sig_alg: str) -> None:
        """Two private PEMs and the audit key, mode 0600; a JWKS with thumbprint kids."""
        directory = tmp_path / "keys"
        result = gateway(
            "keys",
            "generate",
            "--agency",
            TAX,
            "--dir",
            directory,
            "--alg",
            alg,
            process=alg == "ed25519",
        )
        assert result.returncode == 0, result.stderr
        for name in ("signing.pem", "encryption.pem", "audit.key"):
            assert mode(directory / name) == 0o600, name
        assert (directory / "signing.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
        keys = json.loads((directory / "jwks.json").read_text())["keys"]
        assert [key["use"] for key in keys] == ["sig", "enc"]
        assert [key["alg"] for key in keys] == [sig_alg, "ECDH-ES+A256KW"]
        for key in keys:
            assert key["kid"] == thumbprint(key)
            assert "d" not in key
            assert key["kid"] in result.stdout
        signing = load_private_key(directory / "signing.pem", "sig")
        assert signing.kid == keys[0]["kid"]

    def test_generate_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """Existing key files are never replaced."""
        assert gateway("keys", "generate", "--agency", TAX, "--dir", tmp_path).returncode == 0
        before = (tmp_path / "signing.pem").read_bytes()
        result = gateway("keys", "generate", "--agency", TAX, "--dir", tmp_path)
        assert_one_line_error(result, "signing.pem")
        assert (tmp_path / "signing.pem").read_bytes() == before

    def test_generate_with_passphrase(self, tmp_path: Path) -> None:
        """``--passphrase-env`` encrypts the PEMs; they load only with the passphrase."""
        directory = tmp_path / "keys"
        result = gateway(
            "keys",
            "generate",
            "--agency",
            TAX,
            "--dir",
            directory,
            "--passphrase-env",
            "TEST_KEY_PASSPHRASE",
            env={"TEST_KEY_PASSPHRASE": "correct horse battery staple"},
        )
        assert result.returncode == 0, result.stderr
        for name in ("signing.pem", "encryption.pem"):
            text = (directory / name).read_text()
            assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            assert mode(directory / name) == 0o600
        key = load_private_key(directory / "signing.pem", "sig", b"correct horse battery staple")
        assert key.kid == json.loads((directory / "jwks.json").read_text())["keys"][0]["kid"]
        with pytest.raises(SetupError, match="passphrase"):
            load_private_key(directory / "signing.pem", "sig")
        with pytest.raises(SetupError):
            load_private_key(directory / "signing.pem", "sig", b"wrong")

    def test_passphrase_variable_not_set(self, tmp_path: Path) -> None:
        """A named but unset variable is one clear line, and nothing is written."""
        os.environ.pop("UNSET_PASSPHRASE_VAR", None)
        result = gateway(
            "keys",
            "generate",
            "--agency",
            TAX,
            "--dir",
            tmp_path / "keys",
            "--passphrase-env",
            "UNSET_PASSPHRASE_VAR",
        )
        assert_one_line_error(result, "UNSET_PASSPHRASE_VAR")
        assert not (tmp_path / "keys" / "signing.pem").exists()

    def test_api_key(self) -> None:
        """A new random key and the SHA-256 hex to put in gateway.yaml."""
        first = json.loads(gateway("keys", "api-key").stdout)
        second = json.loads(gateway("keys", "api-key").stdout)
        assert first["api_key"] != second["api_key"]
        assert len(first["api_key"]) >= 32
        for answer in (first, second):
            digest = hashlib.sha256(answer["api_key"].encode()).hexdigest()
            assert answer["key_sha256"] == digest

    def test_api_key_given(self) -> None:
        """``--key`` hashes a given key."""
        answer = json.loads(gateway("keys", "api-key", "--key", "abc").stdout)
        assert answer == {
            "api_key": "abc",
            "key_sha256": hashlib.sha256(b"abc").hexdigest(),
        }


@dataclass(frozen=True)
class Workspace:
    """An authority, two agencies' keys and a signed registry, all made with the CLI."""

    root: Path

    @property
    def registry(self) -> Path:
        """The signed registry (``authority.jwks.json`` lies beside it)."""
        return self.root / "registry.jws"

    def key(self, agency: str) -> Path:
        """An agency's signing.pem."""
        return self.root / "keys" / agency / "signing.pem"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Keys for the authority, tax-authority and social-benefits, and the signed registry."""
    root = tmp_path_factory.mktemp("cli")
    for agency, directory in (
        ("authority", root / "authority"),
        (TAX, root / "keys" / TAX),
        (BENEFITS, root / "keys" / BENEFITS),
    ):
        result = gateway("keys", "generate", "--agency", agency, "--dir", directory)
        assert result.returncode == 0, result.stderr
    (root / "authority.jwks.json").write_bytes((root / "authority" / "jwks.json").read_bytes())
    source = {
        "iss": "registry-authority",
        "serial": 4,
        "valid_days": 30,
        "agencies": [
            {
                "id": agency,
                "name": agency.title(),
                "gateway_url": f"http://127.0.0.1:{port}",
                "status": "active",
                "jwks": f"keys/{agency}/jwks.json",
            }
            for agency, port in ((TAX, 9102), (BENEFITS, 9103))
        ],
    }
    (root / "registry.yaml").write_text(yaml.safe_dump(source))
    result = gateway(
        "registry",
        "sign",
        root / "registry.yaml",
        "--key",
        root / "authority" / "signing.pem",
        "--out",
        root / "registry.jws",
    )
    assert result.returncode == 0, result.stderr
    return Workspace(root)


def contract_document(**changes: Any) -> dict[str, Any]:
    """An unsigned contract between the workspace's agencies, in force now."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    document: dict[str, Any] = {
        "id": "benefits-income-2026",
        "version": 1,
        "provider": TAX,
        "consumer": BENEFITS,
        "service": "income-records",
        "purposes": [{"id": "benefit-eligibility", "legal_basis": "Social Security Act s.12"}],
        "fields": ["national_id", "year", "taxable_income"],
        "subject_field": "national_id",
        "requires_end_user": True,
        "valid_from": (today - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valid_until": (today + timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rate_limit": {"requests": 60, "per_seconds": 60},
        "max_request_bytes": 65536,
        "retention_days": 30,
        "status": "active",
        "signatures": [],
    }
    document.update(changes)
    return document


class TestRegistry:
    """``gateway registry sign``."""

    def test_sign_and_verify(self, workspace: Workspace, tmp_path: Path) -> None:
        """The output verifies with the authority key and lists both agencies' keys."""
        out = tmp_path / "registry.jws"
        result = gateway(
            "registry",
            "sign",
            workspace.root / "registry.yaml",
            "--key",
            workspace.root / "authority" / "signing.pem",
            "--out",
            out,
        )
        assert result.returncode == 0, result.stderr
        assert "serial 4" in result.stdout
        authority = load_public_key_file(workspace.root / "authority.jwks.json", "sig")
        now = int(datetime.now(UTC).timestamp())
        registry = verify_registry(out.read_text().strip(), authority, now)
        assert registry.serial == 4
        assert registry.is_active(TAX)
        assert registry.is_active(BENEFITS)
        tax_jwks = json.loads((workspace.root / "keys" / TAX / "jwks.json").read_text())
        assert registry.signing_key(TAX, tax_jwks["keys"][0]["kid"]) is not None

    def test_bad_source_names_field(self, workspace: Workspace, tmp_path: Path) -> None:
        """A source with a bad agency id is one line naming the field."""
        source = yaml.safe_load((workspace.root / "registry.yaml").read_text())
        source["agencies"][0]["id"] = "Not An Id"
        bad = workspace.root / "bad-registry.yaml"
        bad.write_text(yaml.safe_dump(source))
        result = gateway(
            "registry",
            "sign",
            bad,
            "--key",
            workspace.root / "authority" / "signing.pem",
            "--out",
            tmp_path / "out.jws",
        )
        assert_one_line_error(result, "bad-registry.yaml", "agencies[0].id")
        assert not (tmp_path / "out.jws").exists()


class TestContracts:
    """``gateway contracts sign | validate | schema``."""

    def write(self, directory: Path, **changes: Any) -> Path:
        """An unsigned contract file in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "benefits-income-2026.yaml"
        path.write_text(yaml.safe_dump(contract_document(**changes), sort_keys=False))
        return path

    def sign_both(self, workspace: Workspace, path: Path) -> None:
        """Sign ``path`` as provider, then as consumer."""
        for agency in (TAX, BENEFITS):
            result = gateway(
                "contracts", "sign", path, "--agency", agency, "--key", workspace.key(agency)
            )
            assert result.returncode == 0, result.stderr
            assert agency in result.stdout

    def test_sign_both_then_validate(self, workspace: Workspace, tmp_path: Path) -> None:
        """Signed by both parties, the directory validates (exit 0)."""
        path = self.write(tmp_path / "contracts")
        unsigned = gateway("contracts", "validate", path.parent, "--registry", workspace.registry)
        assert unsigned.returncode == 1
        assert "no signature" in unsigned.stdout
        self.sign_both(workspace, path)
        signatures = yaml.safe_load(path.read_text())["signatures"]
        assert [signature["agency"] for signature in signatures] == [TAX, BENEFITS]
        result = gateway(
            "contracts", "validate", path.parent, "--registry", workspace.registry, process=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "benefits-income-2026 v1: valid (in force)" in result.stdout

    def test_one_signature_is_not_enough(self, workspace: Workspace, tmp_path: Path) -> None:
        """Only the provider signed: exit 1 naming the consumer's missing signature."""
        path = self.write(tmp_path / "contracts")
        gateway("contracts", "sign", path, "--agency", TAX, "--key", workspace.key(TAX))
        result = gateway("contracts", "validate", path.parent, "--registry", workspace.registry)
        assert result.returncode == 1
        assert f"{path}: signatures: no signature by the consumer '{BENEFITS}'" in result.stdout

    @pytest.mark.parametrize(
        ("field", "value"),
        [("fields", ["national_id", "year", "taxable_income", "bank_account"]), ("version", 2)],
    )
    def test_tampered_contract(
        self, workspace: Workspace, tmp_path: Path, field: str, value: Any
    ) -> None:
        """A change after signing: exit 1, the file, the field and the reason are printed."""
        path = self.write(tmp_path / "contracts")
        self.sign_both(workspace, path)
        document = yaml.safe_load(path.read_text())
        document[field] = value
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        result = gateway(
            "contracts",
            "validate",
            path.parent,
            "--registry",
            workspace.registry,
            process=field == "fields",
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stdout + result.stderr
        assert f"{path}: signatures: signature of the provider '{TAX}'" in result.stdout
        assert "does not verify" in result.stdout

    def test_invalid_contract_names_field(self, workspace: Workspace, tmp_path: Path) -> None:
        """A schema error names the file, the field and the reason."""
        path = self.write(tmp_path / "contracts", retention_days=0)
        result = gateway("contracts", "validate", path.parent, "--registry", workspace.registry)
        assert result.returncode == 1
        assert f"{path}: retention_days:" in result.stdout
        assert "greater than or equal to 1" in result.stdout

    def test_sign_refuses_non_party(self, workspace: Workspace, tmp_path: Path) -> None:
        """Signing for an agency that is not a party is one clear line."""
        path = self.write(tmp_path / "contracts")
        result = gateway(
            "contracts",
            "sign",
            path,
            "--agency",
            "population-registry",
            "--key",
            workspace.key(TAX),
        )
        assert_one_line_error(result, str(path), "population-registry")

    def test_schema_is_the_published_file(self) -> None:
        """``contracts schema`` prints exactly contracts/schema.json."""
        result = gateway("contracts", "schema", process=True)
        assert result.returncode == 0
        assert result.stdout == (REPO / "contracts" / "schema.json").read_text(encoding="utf-8")


class TestServeSetupErrors:
    """``gateway serve`` with an unusable config: one line, exit 1, no traceback."""

    @pytest.fixture
    def demo(self, tmp_path: Path) -> Path:
        """A demo network's files (not running): ``tax-authority/gateway.yaml`` and keys."""
        build_network(tmp_path / "net", free_port_base(), datetime.now(UTC))
        return tmp_path / "net"

    def edit(self, config: Path, change: Any) -> None:
        """Apply ``change`` to the YAML mapping in ``config``."""
        document = yaml.safe_load(config.read_text())
        change(document)
        config.write_text(yaml.safe_dump(document, sort_keys=False))

    @pytest.mark.parametrize(
        ("change", "needles"),
        [
            (lambda d: d["listen"].update(port=70000), ("listen.port", "65535")),
            (lambda d: d.update(agency="Tax Authority"), ("agency", "pattern")),
            (lambda d: d.pop("public_url"), ("public_url", "required")),
            (lambda d: d.update(unknown_setting=1), ("unknown_setting",)),
            (
                lambda d: d["services"]["income-records"].update(backend_url="not a url"),
                ("services.income-records.backend_url",),
            ),
            (
                lambda d: d["clients"]["assessment-app"].update(key_sha256="plain-text-key"),
                ("clients.assessment-app.key_sha256",),
            ),
        ],
        ids=["port", "agency", "missing", "unknown", "backend-url", "client-hash"],
    )
    def test_broken_config(self, demo: Path, change: Any, needles: tuple[str, ...]) -> None:
        """The line names the config file and the field."""
        config = demo / TAX / "gateway.yaml"
        self.edit(config, change)
        result = gateway("serve", "--config", config, process=needles[0] == "listen.port")
        assert_one_line_error(result, "gateway.yaml", *needles)

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        """A config that is not a YAML mapping is one line."""
        config = tmp_path / "gateway.yaml"
        config.write_text("- just\n- a list\n")
        assert_one_line_error(gateway("serve", "--config", config), "gateway.yaml", "mapping")

    def test_missing_config(self, tmp_path: Path) -> None:
        """A config file that does not exist is one line naming it."""
        result = gateway("serve", "--config", tmp_path / "nowhere.yaml")
        assert_one_line_error(result, "nowhere.yaml")

    @pytest.mark.parametrize("name", ["signing.pem", "encryption.pem", "audit.key"])
    def test_missing_key_file(self, demo: Path, name: str) -> None:
        """A missing key file is one line naming that file."""
        (demo / "keys" / TAX / name).unlink()
        config = demo / TAX / "gateway.yaml"
        result = gateway("serve", "--config", config, process=name == "signing.pem")
        assert_one_line_error(result, name)

    def test_encrypted_key_without_passphrase(self, demo: Path, tmp_path: Path) -> None:
        """Keys encrypted but no passphrase configured: one line saying so."""
        keys = demo / "keys" / TAX
        for name in ("signing.pem", "encryption.pem"):
            (keys / name).unlink()
        other = tmp_path / "encrypted"
        gateway(
            "keys",
            "generate",
            "--agency",
            TAX,
            "--dir",
            other,
            "--passphrase-env",
            "P",
            env={"P": "secret"},
        )
        for name in ("signing.pem", "encryption.pem"):
            (keys / name).write_bytes((other / name).read_bytes())
        result = gateway("serve", "--config", demo / TAX / "gateway.yaml")
        assert_one_line_error(result, "signing.pem", "passphrase")

    def test_missing_registry(self, demo: Path) -> None:
        """A registry file that cannot be read is one line naming it."""
        (demo / "registry.jws").unlink()
        result = gateway("serve", "--config", demo / TAX / "gateway.yaml")
        assert_one_line_error(result, "registry")

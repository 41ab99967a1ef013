"""Interop with an independent implementation: Node.js and panva/jose.

``tests/interop`` holds a consumer (``consumer.mjs``) and a provider
(``provider.mjs``) written from ``protocol.md`` alone, in another language,
with the standard JOSE library of that language; they share no code with the
``gateway`` package. Only the live demo network of ``conftest.py`` is used
from this project: its URLs, key files, contracts and registry.

Forward: the Node consumer gets a token from the Python provider gateway
(tax-authority), completes an exchange and verifies the sealed response
(``in_reply_to``, ``req_hash``, ``fields``), and is refused with the documented
problem types for a replay, a binding mismatch and garbage. Further probes
(``edge`` mode) walk the rest of sections 3.0-3.3.

Reverse: the Node provider takes population-registry's place (it signs a new
trust registry with the authority key, serial + 1, pointing at itself) and the
Python consumer gateway (social-benefits) exchanges with it, and refuses every
deliberately wrong response.

The test needs ``node`` and ``npm``; it is skipped only when they are not
installed. ``npm ci`` runs once when ``tests/interop/node_modules`` is missing
or stale; if it fails (no registry access) the test fails, loudly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LiveNetwork

INTEROP = Path(__file__).parent / "interop"
NODE = shutil.which("node")
NPM = shutil.which("npm")
PROBLEM = "urn:gateway:problem:"

CONSUMER = "social-benefits"
PROVIDER = "tax-authority"
SERVICE = "income-records"
PURPOSE = "benefit-eligibility"
END_USER = "caseworker-17"

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not installed: the Node.js interop consumer cannot run",
)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``tests/interop/node_modules`` with the pinned ``jose``, installed by ``npm ci``."""
    assert NPM is not None
    pinned = json.loads((INTEROP / "package.json").read_text())["dependencies"]["jose"]
    installed = INTEROP / "node_modules" / "jose" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != pinned:
        result = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm ci failed in {INTEROP} (is the npm registry reachable?):\n"
                f"{result.stdout}\n{result.stderr}"
            )
    assert json.loads(installed.read_text())["version"] == pinned
    return INTEROP / "node_modules"


def _consumer_config(network: LiveNetwork) -> dict[str, Any]:
    keys = network.directory / network.agency(CONSUMER)["keys"]
    subject = network.demo["subjects"][0]
    with urllib.request.urlopen(  # noqa: S310 - loopback URL of the live network
        f"{network.url(PROVIDER)}/.well-known/jwks.json", timeout=10
    ) as response:
        provider_jwks = json.load(response)
    return {
        "provider_url": network.url(PROVIDER),
        "provider_id": PROVIDER,
        "consumer_id": CONSUMER,
        "contract": network.demo["contracts"]["income"],
        "service": SERVICE,
        "purpose": PURPOSE,
        "subject": subject,
        "body": {"national_id": subject, "year": 2025},
        "end_user": END_USER,
        "client": "caseworker-app",
        "signing_key_pem": (keys / "signing.pem").read_text(),
        "encryption_key_pem": (keys / "encryption.pem").read_text(),
        # The provider's keys both as served and from the signed registry:
        # the consumer checks that they agree and uses the registry's.
        "registry_jwks": provider_jwks,
        "registry_jws": (network.directory / "registry.jws").read_text(),
        "authority_jwks": json.loads((network.directory / "authority.jwks.json").read_text()),
    }


def run_consumer(network: LiveNetwork, mode: str) -> list[dict[str, Any]]:
    """Run ``consumer.mjs`` in ``mode``; its outcomes, one dict per stdout line."""
    assert NODE is not None
    config = {**_consumer_config(network), "mode": mode}
    result = subprocess.run(
        [NODE, str(INTEROP / "consumer.mjs")],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"consumer.mjs {mode} failed:\n{result.stdout}\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def by_variant(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Outcomes keyed by their ``variant``."""
    return {outcome["variant"]: outcome for outcome in outcomes}


def assert_refused(outcome: dict[str, Any], status: int, name: str) -> None:
    """``outcome`` is the problem+json refusal ``name`` with ``status``."""
    assert outcome["status"] == status, outcome
    assert outcome["problem_type"] == PROBLEM + name, outcome
    assert outcome["content_type"].startswith("application/problem+json"), outcome
    assert "note" not in outcome, outcome


# ---------------------------------------------------------------- forward


@pytest.mark.usefixtures("node_modules")
def test_node_consumer_completes_an_exchange(network: LiveNetwork) -> None:
    """Token (3.1), sealed request (3.3), verified and opened response (3.4)."""
    [outcome] = run_consumer(network, "exchange")
    assert outcome["status"] == 200, outcome
    assert outcome["verified"] is True, outcome
    assert "token_notes" not in outcome, outcome
    assert outcome["backend_status"] == 200
    assert set(outcome["body"]) == {"national_id", "year", "taxable_income"}
    assert outcome["body"]["national_id"] == network.demo["subjects"][0]
    assert outcome["fields"] == ["national_id", "taxable_income", "year"]


@pytest.mark.usefixtures("node_modules")
def test_node_consumer_replay_is_refused(network: LiveNetwork) -> None:
    """The same JWE twice: served once, then ``replay`` (409)."""
    first, second = run_consumer(network, "replay")
    assert (first["step"], second["step"]) == ("first", "second")
    assert first["status"] == 200, first
    assert first["verified"] is True, first
    assert_refused(second, 409, "replay")


@pytest.mark.usefixtures("node_modules")
def test_node_consumer_binding_mismatch_is_refused(network: LiveNetwork) -> None:
    """``subject`` not the body's, ``ath`` of another token, ``purpose``, ``aud``."""
    outcomes = by_variant(run_consumer(network, "binding-mismatch"))
    assert set(outcomes) == {"subject", "ath", "purpose", "aud"}
    for outcome in outcomes.values():
        assert_refused(outcome, 401, "binding-mismatch")


@pytest.mark.usefixtures("node_modules")
def test_node_consumer_garbage_is_refused(network: LiveNetwork) -> None:
    """Random bytes or a random JWE with a valid token; a garbage or missing token."""
    outcomes = by_variant(run_consumer(network, "garbage"))
    assert set(outcomes) == {"body", "jwe", "token", "no-token"}
    assert_refused(outcomes["body"], 400, "envelope-invalid")
    assert_refused(outcomes["jwe"], 400, "envelope-invalid")
    assert_refused(outcomes["token"], 401, "token-invalid")
    assert_refused(outcomes["no-token"], 401, "token-invalid")


# Every probe of the ``edge`` mode; each carries the answer protocol.md calls for.
EDGE_VARIANTS = [
    "token/alg-Ed25519",
    "token/typ-prefixed-mixed-case",
    "token/form-charset",
    "token/assertion-first-use",
    "token/assertion-reuse",
    "token/assertion-lifetime-61",
    "token/iss-ne-sub",
    "token/details-object",
    "token/details-two",
    "token/unknown-contract",
    "token/purpose-not-allowed",
    "token/form-in-two-tcp-writes",
    "token/grant-type",
    "exchange/alg-Ed25519",
    "exchange/typ-prefixed-mixed-case",
    "exchange/no-end-user",
    "exchange/stale",
    "exchange/lifetime-121",
    "exchange/nbf-future",
    "exchange/float-iat",
    "exchange/missing-client",
    "exchange/subject-not-string",
    "exchange/aud-array",
    "exchange/kid-not-cnf-jkt",
    "exchange/signature-by-other-key",
    "exchange/jwe-kid-wrong",
    "exchange/inner-typ-response",
    "exchange/content-type-json",
    "exchange/iss-other-agency",
    "exchange/svc-other",
    "exchange/contract-other",
    "exchange/body-in-two-tcp-writes",
    "exchange/unknown-service-before-token",
    "exchange/over-contract-max-request-bytes",
    "exchange/over-1MiB-before-token",
]


@pytest.fixture(scope="module")
def edge_outcomes(network: LiveNetwork, node_modules: Path) -> dict[str, dict[str, Any]]:
    """The ``edge`` mode's outcomes, run once, keyed by variant."""
    del node_modules
    outcomes = by_variant(run_consumer(network, "edge"))
    assert sorted(outcomes) == sorted(EDGE_VARIANTS)
    return outcomes


@pytest.mark.parametrize("variant", EDGE_VARIANTS)
def test_node_consumer_edge_case(edge_outcomes: dict[str, dict[str, Any]], variant: str) -> None:
    """One probe answers as protocol.md says (status and problem or OAuth error)."""
    outcome = edge_outcomes[variant]
    assert outcome["ok"] is True, outcome
    assert "note" not in outcome, outcome


# ---------------------------------------------------------------- reverse


def _start_node_provider(network: LiveNetwork, stderr_path: Path) -> subprocess.Popen[str]:
    """Start ``provider.mjs`` as population-registry; it re-signs the registry."""
    assert NODE is not None
    directory = network.directory
    keys = directory / network.agency("population-registry")["keys"]
    contract = yaml.safe_load(
        (directory / "population-registry" / "contracts" / "benefits-person-2026.yaml").read_text()
    )
    config = {
        "agency_id": "population-registry",
        "signing_key_pem": (keys / "signing.pem").read_text(),
        "encryption_key_pem": (keys / "encryption.pem").read_text(),
        "registry_path": str(directory / "registry.jws"),
        "authority_signing_key_pem": (directory / "authority" / "signing.pem").read_text(),
        "authority_jwks": json.loads((directory / "authority.jwks.json").read_text()),
        "services": [contract["service"]],
        "contracts": [
            {
                "id": contract["id"],
                "version": contract["version"],
                "provider": contract["provider"],
                "consumer": contract["consumer"],
                "service": contract["service"],
                "purposes": [purpose["id"] for purpose in contract["purposes"]],
                "fields": contract["fields"],
                "subject_field": contract["subject_field"],
                "requires_end_user": contract["requires_end_user"],
            }
        ],
    }
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [NODE, str(INTEROP / "provider.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(json.dumps(config))
    process.stdin.close()
    ready = process.stdout.readline()
    if not ready:
        process.wait(timeout=10)
        process.stdout.close()
        pytest.fail(f"provider.mjs did not start:\n{stderr_path.read_text()}")
    assert json.loads(ready)["ready"] is True
    return process


def _exchange_via_python_consumer(network: LiveNetwork, body: dict[str, Any]) -> tuple[int, str]:
    """A client of social-benefits asks its own gateway (section 5) for person-basic."""
    client_key = network.agency(CONSUMER)["client_keys"]["caseworker-app"]
    request = urllib.request.Request(  # noqa: S310 - loopback URL of the live network
        f"{network.url(CONSUMER)}/v1/exchange/population-registry/person-basic",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {client_key}",
            "X-Purpose": PURPOSE,
            "X-Contract": network.demo["contracts"]["person"],
            "X-End-User": END_USER,
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def node_provider(
    fresh_network: LiveNetwork, node_modules: Path, tmp_path: Path
) -> Iterator[LiveNetwork]:
    """A fresh network whose population-registry is ``provider.mjs``, once the
    social-benefits gateway has reloaded the registry and reaches it."""
    del node_modules
    stderr_path = tmp_path / "provider.stderr"
    process = _start_node_provider(fresh_network, stderr_path)
    try:
        subject = fresh_network.demo["subjects"][0]
        deadline = time.monotonic() + 15
        while True:
            status, text = _exchange_via_python_consumer(fresh_network, {"national_id": subject})
            if status == 200 and json.loads(text).get("municipality") == "interop-node":
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"social-benefits never reached the Node provider: {status} {text}\n"
                    f"{stderr_path.read_text()}"
                )
            time.sleep(0.2)
        yield fresh_network
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_python_consumer_exchanges_with_node_provider(node_provider: LiveNetwork) -> None:
    """The Python consumer gateway's token request and envelope pass the Node
    provider's checks, and it opens the Node provider's response."""
    subject = node_provider.demo["subjects"][0]
    status, text = _exchange_via_python_consumer(node_provider, {"national_id": subject})
    assert status == 200, text
    assert json.loads(text) == {
        "national_id": subject,
        "birth_date": "1970-01-01",
        "municipality": "interop-node",
    }
    # A longer answer still fits every limit of the protocol text.
    status, text = _exchange_via_python_consumer(
        node_provider, {"national_id": subject, "pad_response": 10_000}
    )
    assert status == 200, text
    assert len(json.loads(text)["municipality"]) == len("interop-node ") + 10_000

    # Every deliberately wrong response is refused before the client sees it.
    for tamper in (
        "in_reply_to",
        "req_hash",
        "fields",
        "aud",
        "iss",
        "stale",
        "lifetime",
        "typ",
        "float",
        "signature",
    ):
        status, text = _exchange_via_python_consumer(
            node_provider, {"national_id": subject, "tamper_response": tamper}
        )
        assert status == 502, (tamper, text)
        problem = json.loads(text)
        assert problem["type"] == PROBLEM + "upstream-unreachable", (tamper, problem)
        assert "interop-node" not in text
        assert subject not in text


def test_python_consumer_opens_a_large_node_response(node_provider: LiveNetwork) -> None:
    """A ~48 KiB answer (inner JWS ~65 KB) reaches the client."""
    subject = node_provider.demo["subjects"][0]
    status, text = _exchange_via_python_consumer(
        node_provider, {"national_id": subject, "pad_response": 48_000}
    )
    assert status == 200, text
    assert len(json.loads(text)["municipality"]) == len("interop-node ") + 48_000

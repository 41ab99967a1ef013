"""The demo scenario: what a newcomer should see the network allow and refuse.

Each case is a real HTTP request: clients call their own gateway; the replay
and revoked-key cases speak the wire protocol directly, as a misbehaving
peer gateway would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.network import BENEFITS, POPULATION, TAX
from gateway.envelope import EncodedBody, seal_request
from gateway.keys import load_private_key
from gateway.registry import Registry
from gateway.tokens import CLIENT_ASSERTION_TYPE, GRANT_TYPE, RequestedGrant, make_client_assertion


@dataclass(frozen=True)
class CaseResult:
    """One row of the scenario table."""

    case: str
    expected: str
    got: str
    detail: str

    @property
    def ok(self) -> bool:
        """The case behaved as expected."""
        return self.expected == self.got


def _outcome(status: int, body: Any) -> str:
    if status == 200:
        return "200 ok"
    if isinstance(body, dict) and "type" in body:
        return f"{status} {str(body['type']).rsplit(':', 1)[-1]}"
    if isinstance(body, dict) and "error" in body:
        return f"{status} {body['error']}"
    return str(status)


async def _call_exchange(
    session: aiohttp.ClientSession,
    agency: dict[str, Any],
    provider: str,
    service: str,
    body: dict[str, Any],
    *,
    purpose: str,
    client_key: str,
    contract: str | None = None,
) -> tuple[int, Any]:
    headers = {
        "Authorization": f"Bearer {client_key}",
        "X-Purpose": purpose,
        "X-End-User": "caseworker-17",
    }
    if contract:
        headers["X-Contract"] = contract
    url = f"{agency['url']}/v1/exchange/{provider}/{service}"
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def _replay(
    session: aiohttp.ClientSession, directory: Path, demo: dict[str, Any], registry: Registry
) -> tuple[str, str]:
    """Send one valid sealed request twice, as a peer gateway; the second must be refused."""
    key = load_private_key(directory / demo["agencies"][BENEFITS]["keys"] / "signing.pem", "sig")
    provider_url = demo["agencies"][TAX]["url"]
    grant = RequestedGrant(demo["contracts"]["income"], "income-records", "benefit-eligibility")
    now = int(time.time())
    form = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": make_client_assertion(BENEFITS, TAX, key, now),
        "authorization_details": json.dumps([grant.to_json()]),
    }
    async with session.post(f"{provider_url}/v1/token", data=form) as response:
        token = (await response.json())["access_token"]
    recipient = registry.encryption_key(TAX)
    if recipient is None:  # pragma: no cover - the demo registry lists it
        raise RuntimeError("tax-authority has no encryption key")
    subject = demo["subjects"][0]
    sealed = seal_request(
        consumer=BENEFITS,
        provider=TAX,
        service="income-records",
        contract=grant.contract,
        purpose=grant.purpose,
        subject=subject,
        client="caseworker-app",
        end_user="caseworker-17",
        body=EncodedBody.of({"national_id": subject, "year": 2025}),
        access_token=token,
        signing_key=key,
        recipient=recipient,
        now=now,
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/jose"}
    outcomes = []
    for _ in range(2):
        async with session.post(
            f"{provider_url}/v1/services/income-records", data=sealed.jwe, headers=headers
        ) as response:
            raw = await response.read()
            answer = json.loads(raw) if response.status != 200 else None
            outcomes.append(_outcome(response.status, answer))
    return outcomes[1], f"first send: {outcomes[0]}"


async def _revoked_key(
    session: aiohttp.ClientSession, directory: Path, demo: dict[str, Any]
) -> tuple[str, str]:
    """Ask for a token with a key the registry no longer lists."""
    key = load_private_key(directory / "keys" / "social-benefits-revoked" / "signing.pem", "sig")
    grant = RequestedGrant(demo["contracts"]["income"], "income-records", "benefit-eligibility")
    form = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": make_client_assertion(BENEFITS, TAX, key, int(time.time())),
        "authorization_details": json.dumps([grant.to_json()]),
    }
    url = f"{demo['agencies'][TAX]['url']}/v1/token"
    async with session.post(url, data=form) as response:
        body = await response.json(content_type=None)
        return _outcome(response.status, body), str(body.get("error_description", ""))


async def run_scenario(
    directory: Path, demo: dict[str, Any], registry: Registry
) -> list[CaseResult]:
    """Run every case against the live network and return the table rows."""
    benefits = demo["agencies"][BENEFITS]
    tax = demo["agencies"][TAX]
    caseworker = benefits["client_keys"]["caseworker-app"]
    batch = benefits["client_keys"]["reporting-batch"]
    subject = demo["subjects"][0]
    rows: list[CaseResult] = []
    async with aiohttp.ClientSession() as session:

        async def exchange(case: str, expected: str, *args: Any, **kwargs: Any) -> None:
            status, body = await _call_exchange(session, *args, **kwargs)
            detail = (
                "released: " + ", ".join(sorted(body))
                if status == 200
                else str(body.get("detail", ""))
            )
            rows.append(CaseResult(case, expected, _outcome(status, body), detail))

        await exchange(
            "allowed: income for benefit eligibility",
            "200 ok",
            benefits,
            TAX,
            "income-records",
            {"national_id": subject, "year": 2025},
            purpose="benefit-eligibility",
            client_key=caseworker,
        )
        await exchange(
            "allowed: person for benefit eligibility",
            "200 ok",
            benefits,
            POPULATION,
            "person-basic",
            {"national_id": subject},
            purpose="benefit-eligibility",
            client_key=caseworker,
        )
        await exchange(
            "allowed: person for tax assessment",
            "200 ok",
            tax,
            POPULATION,
            "person-basic",
            {"national_id": subject},
            purpose="tax-assessment",
            client_key=tax["client_keys"]["assessment-app"],
        )
        await exchange(
            "wrong purpose",
            "403 contract-denied",
            benefits,
            TAX,
            "income-records",
            {"national_id": subject, "year": 2025},
            purpose="marketing",
            client_key=caseworker,
        )
        await exchange(
            "client not allowed that contract",
            "403 forbidden",
            benefits,
            POPULATION,
            "person-basic",
            {"national_id": subject},
            purpose="benefit-eligibility",
            client_key=batch,
        )
        await exchange(
            "expired contract",
            "403 contract-denied",
            benefits,
            TAX,
            "income-records",
            {"national_id": subject, "year": 2025},
            purpose="benefit-eligibility",
            client_key=caseworker,
            contract=demo["contracts"]["expired"],
        )
        await exchange(
            "unknown client key",
            "401 unauthorized",
            benefits,
            TAX,
            "income-records",
            {"national_id": subject, "year": 2025},
            purpose="benefit-eligibility",
            client_key="not-a-real-key",
        )
        got, detail = await _revoked_key(session, directory, demo)
        rows.append(CaseResult("revoked key asks for a token", "401 invalid_client", got, detail))
        got, detail = await _replay(session, directory, demo, registry)
        rows.append(CaseResult("replayed request", "409 replay", got, detail))
    return rows


def render_table(rows: list[CaseResult]) -> str:
    """The scenario table as fixed-width text."""
    header = ("", "case", "expected", "got", "detail")
    lines = [
        (("ok" if row.ok else "FAIL"), row.case, row.expected, row.got, row.detail) for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(4)]
    out = []
    for line in [header, *lines]:
        cells = [str(cell).ljust(widths[i]) for i, cell in enumerate(line[:4])]
        out.append("  ".join([*cells, str(line[4])]).rstrip())
    return "\n".join(out)

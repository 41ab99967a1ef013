"""The audit log checked by an independent implementation (protocol section 6).

``tests/interop/audit_verifier.mjs`` is a verifier written from RFC 9162 and
the C2SP signed-note and tlog-checkpoint specifications, in another language,
with nothing but Node's built-in crypto; it shares no code with the
``gateway`` package and reads the log only through the officer API. Against
each gateway of a live network after traffic it:

* checks the verifier key (its key id) and the checkpoint's Ed25519 signature;
* pages through every record, checks each served leaf against its record and
  recomputes the RFC 9162 root of the checkpoint's size from the leaf hashes
  (leaves deleted by retention count by their ``leaf_hash``);
* verifies inclusion proofs (first, last, middle, random leaves) and
  consistency proofs, one of them from a checkpoint signed before more
  traffic;
* finds no clear subject id in any byte it received.

Each proof it accepts it also mutates and must then reject; and with
``tamper`` it plays a gateway that answers wrongly, and must fail.

The test needs ``node`` (no npm packages); it is skipped only when node is not
installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml

from gateway.audit.store import expire_sql
from gateway.demo.network import BENEFITS, POPULATION, TAX
from gateway.demo.scenario import run_scenario
from tests.conftest import LiveNetwork
from tests.wire import PURPOSE, audit_path, audit_records, custom_network

VERIFIER: Final = Path(__file__).parent / "interop" / "audit_verifier.mjs"
NODE: Final = shutil.which("node")
AGENCIES: Final = (POPULATION, TAX, BENEFITS)
# Leaves of tax-authority's log whose bytes "retention" deletes before the verifier runs.
EXPIRED: Final = (1, 2)

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the independent audit verifier cannot run"
)


@dataclass
class AuditedNetwork:
    """A live network after two rounds of traffic, with a checkpoint from between them."""

    net: LiveNetwork
    previous: dict[str, str]


def _fast_checkpoints(directory: Path, demo: dict[str, Any]) -> None:
    """Sign checkpoints every 0.2 s instead of every 10 s."""
    for agency in demo["agencies"].values():
        path = directory / agency["config"]
        config = yaml.safe_load(path.read_text())
        config["audit"]["checkpoint_every_seconds"] = 0.2
        path.write_text(yaml.safe_dump(config, sort_keys=False))


async def _traffic(net: LiveNetwork) -> None:
    """The demo scenario (all three gateways), and exchanges about two more subjects."""
    await run_scenario(net.directory, net.demo, net.registry)
    benefits = net.agency(BENEFITS)
    async with aiohttp.ClientSession() as session:
        for subject in net.demo["subjects"][1:3]:
            async with session.post(
                f"{benefits['url']}/v1/exchange/{TAX}/income-records",
                json={"national_id": subject, "year": 2025},
                headers={
                    "Authorization": f"Bearer {benefits['client_keys']['caseworker-app']}",
                    "X-Purpose": PURPOSE,
                    "X-End-User": "caseworker-17",
                },
            ) as response:
                assert response.status == 200, await response.text()


def _checkpoint(net: LiveNetwork, agency: str) -> str:
    request = urllib.request.Request(  # noqa: S310 - loopback URL of the live network
        f"{net.url(agency)}/v1/audit/checkpoint",
        headers={"Authorization": f"Bearer {net.agency(agency)['officer_key']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        text: str = response.read().decode("utf-8")
        return text


def _checkpoint_covering(net: LiveNetwork, agency: str) -> str:
    """The first signed checkpoint that covers every record the log holds now."""
    size = len(audit_records(audit_path(net, agency)))
    deadline = time.monotonic() + 10
    while True:
        note = _checkpoint(net, agency)
        if int(note.split("\n")[1]) >= size:
            return note
        assert time.monotonic() < deadline, f"{agency} signed no checkpoint of {size} records"
        time.sleep(0.1)


def _expire(net: LiveNetwork, agency: str, indices: tuple[int, ...]) -> None:
    """Delete the bytes of some leaves as retention does (the store's own statement)."""
    with contextlib.closing(sqlite3.connect(audit_path(net, agency), timeout=10)) as conn:
        marks = ", ".join("?" for _ in indices)
        conn.execute(
            f"UPDATE audit_leaves SET expires_at = '1970-01-01T00:00:00.000Z'"  # noqa: S608
            f" WHERE idx IN ({marks})",
            indices,
        )
        conn.execute(expire_sql(lambda _: "?"), ("1971-01-01T00:00:00.000Z",))
        conn.commit()


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedNetwork]:
    """Traffic, a checkpoint per gateway, more traffic, a newer checkpoint, then retention."""
    directory = tmp_path_factory.mktemp("audited") / "network"
    with custom_network(directory, _fast_checkpoints) as net:
        asyncio.run(_traffic(net))
        previous = {agency: _checkpoint_covering(net, agency) for agency in AGENCIES}
        asyncio.run(_traffic(net))
        for agency in AGENCIES:
            _checkpoint_covering(net, agency)
        _expire(net, TAX, EXPIRED)
        yield AuditedNetwork(net, previous)


def run_verifier(
    audited: AuditedNetwork, agency: str, **overrides: Any
) -> tuple[int, dict[str, Any]]:
    """Run ``audit_verifier.mjs`` against ``agency``; its exit code and its JSON line."""
    assert NODE is not None
    net = audited.net
    forbidden = {
        f"client key {owner}/{client}": key
        for owner in AGENCIES
        for client, key in net.agency(owner)["client_keys"].items()
    }
    config = {
        "url": net.url(agency),
        "officer_key": net.agency(agency)["officer_key"],
        "origin": f"{agency}/audit",
        "subjects": net.demo["subjects"],
        "previous_checkpoint": audited.previous[agency],
        "forbidden": forbidden,
        "page_limit": 10,
        **overrides,
    }
    result = subprocess.run(
        [NODE, str(VERIFIER)],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"audit_verifier.mjs:\n{result.stdout}\n{result.stderr}"
    outcome: dict[str, Any] = json.loads(lines[0])
    return result.returncode, outcome


@pytest.mark.parametrize("agency", AGENCIES)
def test_independent_verifier_accepts_the_log(audited: AuditedNetwork, agency: str) -> None:
    """Key, signature, root from the served leaves, proofs, and no clear subject id."""
    code, summary = run_verifier(audited, agency)
    assert code == 0, summary
    assert summary["ok"] is True
    assert summary["origin"] == f"{agency}/audit"
    size = summary["checkpoint"]["size"]
    previous = summary["previous_checkpoint"]["size"]
    assert 0 < previous < size, summary
    assert summary["records_served"] >= size
    assert summary["pages"] > 1  # the cursor was followed
    assert summary["leaves_deleted"] == (len(EXPIRED) if agency == TAX else 0)
    checked = [item["index"] for item in summary["inclusion"]]
    assert {0, size - 1, size // 2} <= set(checked)
    assert any(item["proof_hashes"] > 1 for item in summary["inclusion"])
    assert [previous, size] in summary["consistency"]
    assert [1, size] in summary["consistency"]
    assert summary["subjects_scanned"] == len(audited.net.demo["subjects"])
    # The scenario's subject is in every log, and the officer finds it by its clear id.
    assert summary["subject_matches"][0] > 0
    assert summary["self_checks_rejected"]["inclusion"] > 0
    assert summary["self_checks_rejected"]["consistency"] > 0


# Each way of answering wrongly, and what the verifier must say about it.
TAMPERING: Final = {
    "proof": "inclusion proof of leaf",
    "consistency": "consistency proof from",
    "root": "signature by tax-authority/audit does not verify",
    "signature": "signature by tax-authority/audit does not verify",
    "rewrite": "does not have the checkpoint's root",
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_independent_verifier_rejects_wrong_answers(audited: AuditedNetwork, tamper: str) -> None:
    """A flipped proof hash, root or signature, or one consistently rewritten record."""
    code, outcome = run_verifier(audited, TAX, tamper=tamper)
    assert code == 1, outcome
    assert outcome["ok"] is False
    assert TAMPERING[tamper] in outcome["reason"], outcome


def test_independent_verifier_sees_a_value_that_is_there(audited: AuditedNetwork) -> None:
    """The privacy scan finds what is present: the officer's id is in its own records."""
    code, outcome = run_verifier(audited, BENEFITS, subjects=["privacy-office"])
    assert code == 1, outcome
    assert outcome["reason"] == "privacy: subject #0 appears in what the gateway served"


def test_independent_verifier_refuses_another_logs_checkpoint(audited: AuditedNetwork) -> None:
    """A checkpoint signed by population-registry's log key is no checkpoint of tax-authority."""
    code, outcome = run_verifier(audited, TAX, previous_checkpoint=audited.previous[POPULATION])
    assert code == 1, outcome
    assert outcome["reason"] == "checkpoint: no signature by the log key"

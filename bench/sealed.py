"""Pre-built exchange requests: wrk straight at the provider gateway, each request once.

To load one gateway alone (the provider, scenario P), wrk must send what a
consumer gateway sends: ``POST /v1/services/income-records`` with the access
token and a JWE holding the signed request. Every request carries a fresh
``jti`` and the provider refuses a replay (409 ``replay``), so each may be
sent once: before each run the benchmark

1. gets an access token from the provider's ``/v1/token`` as the consumer
   gateway does (``gateway.tokens.make_client_assertion`` with the consumer's
   signing key, ``client_credentials`` with ``authorization_details``);
2. seals as many requests as the run can use (the rate seen in the last run
   of the same set-up, or a generous guess, times the seconds, times a margin)
   with ``gateway.envelope.seal_request`` (``bench.crypto.seal_bench_request``),
   in one process per CPU, into a file that ``bench/wrk/requests.lua`` reads a
   line at a time.

Messages are valid for 120 s after their ``iat`` (30 s of clock skew
allowed), so they are sealed right before the run that sends them, after the
servers went idle and the machine quiet, and before the servers' CPU is read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.parse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

from bench.crypto import seal_bench_request
from bench.loadgen import REQUESTS_SCRIPT, LoadError, LoadResult, run_wrk
from bench.network import CONSUMER, CONTRACT, PROVIDER, PURPOSE, SERVICE, BenchNetwork
from bench.payloads import request_bytes
from bench.procs import ProcessError, post
from gateway.keys import load_agency_keys
from gateway.tokens import CLIENT_ASSERTION_TYPE, GRANT_TYPE, RequestedGrant, make_client_assertion

# Before any run of a set-up, the rate a provider worker is assumed to reach at most
# (about 3x what one reached on 2 cores); afterwards, the rate the last run reached.
GUESS_RPS_PER_WORKER: Final = 1000.0
# Requests sealed per expected request: room for a measured run faster than its warm-up.
MARGIN: Final = 2.0


def fetch_token(network: BenchNetwork) -> str:
    """An access token for the bench contract, granted by the provider to the consumer."""
    keys = network.keys[CONSUMER]
    now = int(time.time())
    grant = RequestedGrant(contract=CONTRACT, service=SERVICE, purpose=PURPOSE)
    form = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": make_client_assertion(CONSUMER, PROVIDER, keys.signing, now),
        "authorization_details": json.dumps([grant.to_json()]),
    }
    url = f"http://127.0.0.1:{network.gateway_port(PROVIDER)}/v1/token"
    status, _, raw = post(
        url,
        urllib.parse.urlencode(form).encode("ascii"),
        {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    if status != 200:
        raise ProcessError(f"the provider refused a token: status {status}: {raw[:300]!r}")
    token: str = json.loads(raw)["access_token"]
    return token


def send_one(network: BenchNetwork, payload: int) -> tuple[int, bytes]:
    """One request sealed and sent to the provider as wrk sends them: status and body."""
    token = fetch_token(network)
    sealed = seal_bench_request(
        json.loads(request_bytes(payload)),
        token=token,
        signing_key=network.keys[CONSUMER].signing,
        recipient=network.keys[PROVIDER].encryption.public,
        now=int(time.time()),
    )
    status, _, raw = post(
        network.service_url,
        sealed.jwe,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/jose"},
    )
    return status, raw


def _seal_lines(keys_root: Path, token: str, payload: int, count: int, path: Path) -> None:
    """``count`` sealed requests into ``path``, one ``TOKEN JWE`` line each (one process)."""
    consumer = load_agency_keys(keys_root / CONSUMER)
    recipient = load_agency_keys(keys_root / PROVIDER).encryption.public
    body = json.loads(request_bytes(payload))
    with path.open("w", encoding="ascii") as out:
        for _ in range(count):
            sealed = seal_bench_request(
                body,
                token=token,
                signing_key=consumer.signing,
                recipient=recipient,
                now=int(time.time()),
            )
            out.write(f"{token} {sealed.jwe.decode('ascii')}\n")


def seal_requests(network: BenchNetwork, token: str, payload: int, count: int, path: Path) -> None:
    """``count`` sealed requests into ``path``, sealed in one process per CPU."""
    processes = max(1, os.cpu_count() or 1)
    shares = [count // processes + (1 if n < count % processes else 0) for n in range(processes)]
    parts = [path.with_name(f"{path.name}.{n}") for n in range(processes)]
    keys_root = network.root / "keys"
    # fork: the workers start with this process's imports, in milliseconds.
    with ProcessPoolExecutor(processes, mp_context=get_context("fork")) as pool:
        done = [
            pool.submit(_seal_lines, keys_root, token, payload, share, part)
            for share, part in zip(shares, parts, strict=True)
            if share
        ]
        for future in done:
            future.result()
    with path.open("wb") as out:
        for part in parts:
            if part.exists():
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out)
                part.unlink()


@dataclass
class SealedLoad:
    """Sealed requests for the provider gateway at one ``--workers`` count, made per run."""

    network: BenchNetwork
    wrk: str
    url: str
    connections: int
    payload: int
    workers: int
    path: Path
    log: Path | None = None
    margin: float = MARGIN
    rate: float | None = None  # requests per second of the last run
    generations: list[dict[str, Any]] = field(default_factory=list)

    def prepare(self, seconds: float) -> None:
        """Seal enough requests for ``seconds`` at the expected rate, with the margin."""
        rate = self.rate if self.rate is not None else GUESS_RPS_PER_WORKER * self.workers
        # wrk checks the script with one request and leaves one in flight per connection.
        count = math.ceil(rate * seconds * self.margin) + self.connections + 1
        started = time.perf_counter()
        seal_requests(self.network, fetch_token(self.network), self.payload, count, self.path)
        took = time.perf_counter() - started
        self.generations.append(
            {"requests": count, "seconds": round(took, 3), "per_second": round(count / took)}
        )

    def run(self, seconds: float) -> LoadResult:
        """One run of ``bench/wrk/requests.lua`` over the file; the margin doubles if it ran dry."""
        if not self.generations:
            raise LoadError("SealedLoad.run before prepare")
        result = run_wrk(
            self.wrk,
            self.url,
            connections=self.connections,
            seconds=seconds,
            script=REQUESTS_SCRIPT,
            arguments=[str(self.path)],
            log=self.log,
        )
        self.rate = max(result.throughput, result.handed_out / seconds)
        if result.exhausted:
            self.margin *= 2
        return result

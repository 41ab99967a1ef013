"""Live reloading: a refused registry or contract file never weakens what is enforced."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml

from gateway import runtime as runtime_module
from gateway.backend import HttpBackend
from gateway.config import load_settings
from gateway.contracts import Contract, ContractDirLoader, ContractProblem
from gateway.demo import demo_registry
from gateway.demo.network import BENEFITS, INCOME_CONTRACT, TAX, build_network
from gateway.errors import Overloaded
from gateway.inbound import Provider
from gateway.keys import load_private_key, load_public_key_file
from gateway.registry import RegistryCheck, RegistryHolder, build_registry_payload, sign_registry
from gateway.replay import MemoryReplayCache
from gateway.runtime import Runtime, build_runtime
from tests.conftest import LiveNetwork
from tests.test_contracts import CountingLoader
from tests.wire import Peer

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def tax_runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """The tax authority's runtime over a freshly written demo network (no HTTP)."""
    build_network(tmp_path, 30000, datetime.now(UTC))
    runtime = await build_runtime(load_settings(tmp_path / TAX / "gateway.yaml"))
    yield runtime
    await runtime.close()


def _failures(runtime: Runtime, source: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "gateway_reload_failures_total", {"source": source}
    )
    return value or 0.0


async def test_bad_contract_file_keeps_the_previous_set(tax_runtime: Runtime) -> None:
    """A new bad file is refused, reported and counted; the contracts in force stay."""
    before = set(tax_runtime.contracts.current.ids())
    bad = tax_runtime.settings.contracts.dir / "broken.yaml"
    bad.write_text("id: [not, a, contract\n", encoding="utf-8")
    await tax_runtime.reload()
    assert set(tax_runtime.contracts.current.ids()) == before
    assert any("broken.yaml" in problem for problem in tax_runtime.contracts.problems)
    assert _failures(tax_runtime, "contracts") == 1
    bad.unlink()
    await tax_runtime.reload()
    assert tax_runtime.contracts.problems == ()
    assert set(tax_runtime.contracts.current.ids()) == before


async def test_contract_of_untrusted_signer_leaves_force(tax_runtime: Runtime) -> None:
    """When the registry stops listing a party's key, its contracts are dropped at once."""
    directory = tax_runtime.settings.base_dir.parent
    source = yaml.safe_load((directory / "registry.yaml").read_text(encoding="utf-8"))
    source["serial"] = 2
    # social-benefits now publishes its "revoked" key folder's keys instead of its real ones.
    for agency in source["agencies"]:
        if agency["id"] == BENEFITS:
            agency["jwks"] = "keys/social-benefits-revoked/jwks.json"
    (directory / "registry.yaml").write_text(yaml.safe_dump(source), encoding="utf-8")
    authority = load_private_key(directory / "authority" / "signing.pem", "sig")
    payload = build_registry_payload(directory / "registry.yaml", tax_runtime.now())
    (directory / "registry.jws").write_text(sign_registry(payload, authority), encoding="ascii")
    assert tax_runtime.contract(INCOME_CONTRACT) is not None
    await tax_runtime.reload()
    assert tax_runtime.trusted().serial == 2
    assert tax_runtime.contract(INCOME_CONTRACT) is None
    assert _failures(tax_runtime, "contracts") == 1


async def test_garbage_registry_keeps_the_last_good_one(tax_runtime: Runtime) -> None:
    """A registry file that does not verify is refused; the one in force stays."""
    serial = tax_runtime.trusted().serial
    registry_path = tax_runtime.settings.registry.path
    registry_path.write_text("not.a.registry", encoding="ascii")
    await tax_runtime.reload()
    assert tax_runtime.trusted().serial == serial
    assert tax_runtime.registry.last_error
    assert _failures(tax_runtime, "registry") == 1


def _republish_registry(runtime: Runtime, **changes: object) -> None:
    """Sign the network's registry again with ``changes`` (``serial`` at least) to its source."""
    directory = runtime.settings.base_dir.parent
    source = yaml.safe_load((directory / "registry.yaml").read_text(encoding="utf-8"))
    source.update(changes)
    (directory / "registry.yaml").write_text(yaml.safe_dump(source), encoding="utf-8")
    authority = load_private_key(directory / "authority" / "signing.pem", "sig")
    payload = build_registry_payload(directory / "registry.yaml", runtime.now())
    path = runtime.settings.registry.path
    path.write_text(sign_registry(payload, authority), encoding="ascii")
    # A distinct mtime even where the file system's clock is coarse.
    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))


def _edit(path: Path, comment: str) -> None:
    """Change a contract file's bytes but not its contract: the signatures still verify."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"# {comment}\n")


async def test_reload_parses_only_changed_files(tax_runtime: Runtime) -> None:
    """Only a changed file is parsed again; a new registry serial keeping the keys checks none."""
    directory = tax_runtime.settings.contracts.dir
    names = sorted(path.name for path in directory.glob("*.yaml"))
    ids = set(tax_runtime.contracts.current.ids())
    loader = CountingLoader(directory)
    tax_runtime.contracts.loader = loader  # cold: the next reload parses everything
    _edit(directory / names[0], "first")
    await tax_runtime.reload()
    assert loader.done() == (names, sorted(ids))
    _edit(directory / names[1], "second")
    await tax_runtime.reload()
    assert loader.done() == ([names[1]], [tax_runtime.contracts.current.ids()[1]])
    await tax_runtime.reload()  # nothing changed: not even read
    assert loader.done() == ([], [])
    _republish_registry(tax_runtime, serial=2)
    await tax_runtime.reload()
    assert tax_runtime.trusted().serial == 2
    # Read again (the serial changed), but the parties' keys did not: no signature check.
    assert loader.done() == ([], [])
    assert set(tax_runtime.contracts.current.ids()) == ids
    assert (tax_runtime.contracts.problems, _failures(tax_runtime, "contracts")) == ((), 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_reload_sweeps_the_folder_only_when_the_kernel_reports_a_change(
    tax_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload with no news from the kernel neither lists nor stats the contract files."""
    directory = tax_runtime.settings.contracts.dir
    swept: list[Path] = []
    sweep = runtime_module._dir_stamp

    def counted(folder: Path) -> tuple[runtime_module.DirStamp, bool]:
        swept.append(folder)
        return sweep(folder)

    monkeypatch.setattr(runtime_module, "_dir_stamp", counted)
    assert tax_runtime.contracts.watch.kernel_told
    loader = CountingLoader(directory)
    tax_runtime.contracts.loader = loader
    await tax_runtime.reload()
    assert (swept, loader.done()) == ([], ([], []))
    name = sorted(path.name for path in directory.glob("*.yaml"))[0]
    _edit(directory / name, "noticed")
    await tax_runtime.reload()
    assert swept == [directory]
    assert loader.done()[0] == sorted(path.name for path in directory.glob("*.yaml"))
    await tax_runtime.reload()
    assert swept == [directory]


async def test_a_linked_contract_file_is_checked_at_every_reload(
    tax_runtime: Runtime, tmp_path: Path
) -> None:
    """A contract file that is a symbolic link: its target's change is found, with no event."""
    directory = tax_runtime.settings.contracts.dir
    before = set(tax_runtime.contracts.current.ids())
    link = sorted(directory.glob("*.yaml"))[0]
    target = tmp_path / "kept-elsewhere.yaml"
    link.rename(target)
    link.symlink_to(target)
    await tax_runtime.reload()
    assert set(tax_runtime.contracts.current.ids()) == before
    assert tax_runtime.contracts.problems == ()
    target.write_text("id: [\n", encoding="utf-8")  # outside the watched folder
    await tax_runtime.reload()
    assert any(link.name in problem for problem in tax_runtime.contracts.problems)


async def test_serial_change_with_a_bad_file_still_drops_untrusted_signers(
    tax_runtime: Runtime,
) -> None:
    """With a refused file in the folder, a registry dropping a signer still takes effect."""
    directory = tax_runtime.settings.contracts.dir
    (directory / "broken.yaml").write_text("id: [\n", encoding="utf-8")
    await tax_runtime.reload()
    assert tax_runtime.contract(INCOME_CONTRACT) is not None
    registry = yaml.safe_load((directory.parents[1] / "registry.yaml").read_text("utf-8"))
    agencies = [
        {**agency, "jwks": "keys/social-benefits-revoked/jwks.json"}
        if agency["id"] == BENEFITS
        else agency
        for agency in registry["agencies"]
    ]
    _republish_registry(tax_runtime, serial=2, agencies=agencies)
    await tax_runtime.reload()
    assert tax_runtime.trusted().serial == 2
    assert tax_runtime.contract(INCOME_CONTRACT) is None
    assert any("broken.yaml" in problem for problem in tax_runtime.contracts.problems)
    assert _failures(tax_runtime, "contracts") == 2


class ThreadRecordingLoader(ContractDirLoader):
    """Records the threads that parse contract files."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.threads: set[int] = set()

    def parse(
        self, source: str, data: bytes
    ) -> tuple[Contract | None, tuple[ContractProblem, ...]]:
        self.threads.add(threading.get_ident())
        return super().parse(source, data)


class ThreadRecordingHolder(RegistryHolder):
    """Records the threads that check the registry file."""

    threads: set[int]

    def check(self, now: int, *, force: bool = False) -> RegistryCheck:
        self.threads.add(threading.get_ident())
        return super().check(now, force=force)


async def test_reload_keeps_file_work_off_the_loop(tax_runtime: Runtime) -> None:
    """Registry and contract files are read in a worker thread; the result is applied."""
    settings = tax_runtime.settings
    holder = ThreadRecordingHolder(
        settings.registry.path, load_public_key_file(settings.registry.authority_key)
    )
    holder.threads = set()
    holder.load(tax_runtime.now())
    tax_runtime.registry = holder
    loader = ThreadRecordingLoader(settings.contracts.dir)
    tax_runtime.contracts.loader = loader
    before = set(tax_runtime.contracts.current.ids())
    (settings.contracts.dir / "broken.yaml").write_text("id: [\n", encoding="utf-8")
    await tax_runtime.reload()
    loop_thread = threading.get_ident()
    assert holder.threads
    assert loop_thread not in holder.threads
    assert loader.threads
    assert loop_thread not in loader.threads
    assert set(tax_runtime.contracts.current.ids()) == before
    assert any("broken.yaml" in problem for problem in tax_runtime.contracts.problems)
    assert _failures(tax_runtime, "contracts") == 1


class BlockingLoader(ContractDirLoader):
    """Holds its first parse until released, to interleave two reloads deterministically."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.entered = threading.Event()
        self.release = threading.Event()

    def parse(
        self, source: str, data: bytes
    ) -> tuple[Contract | None, tuple[ContractProblem, ...]]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(timeout=30)
        return super().parse(source, data)


async def test_reloads_never_overlap(tax_runtime: Runtime) -> None:
    """Reloads queue: the next one reads files only once the one before has applied."""
    directory = tax_runtime.settings.contracts.dir
    loader = BlockingLoader(directory)
    tax_runtime.contracts.loader = loader
    (directory / "broken.yaml").write_text("id: [\n", encoding="utf-8")
    first = asyncio.create_task(tax_runtime.reload())
    queued = [asyncio.create_task(tax_runtime.reload()) for _ in range(2)]
    assert await asyncio.to_thread(loader.entered.wait, 30)
    await asyncio.sleep(0.05)  # time for a queued reload to reach its file work, if it could
    assert not any(task.done() for task in queued)
    loader.release.set()
    await asyncio.gather(first, *queued)
    # Had the queued reloads read the files before the first applied its result,
    # each would have found the bad file new and counted it again.
    assert _failures(tax_runtime, "contracts") == 1
    assert tax_runtime.contracts.reload_failures == 1
    (directory / "broken.yaml").unlink()
    await tax_runtime.reload()
    assert tax_runtime.contracts.problems == ()


async def test_token_refused_by_full_replay_cache_is_audited(tmp_path: Path) -> None:
    """A token request refused because the replay cache is full is on the record and counted."""
    demo = build_network(tmp_path, 30000, datetime.now(UTC))
    runtime = await build_runtime(load_settings(tmp_path / TAX / "gateway.yaml"))
    try:
        runtime.replay = MemoryReplayCache(1)
        runtime.replay.spend_now("someone", "filler", int(time.time()) + 600, int(time.time()))
        net = LiveNetwork(tmp_path, demo, demo_registry(tmp_path))
        raw = urlencode(Peer(net).form()).encode()
        with pytest.raises(Overloaded) as refused:
            await Provider(runtime, HttpBackend(None)).token(FORM, raw)  # type: ignore[arg-type]
        stored = await runtime.audit.read(refused.value.audit_id or 0)
        assert stored.leaf is not None
        record = json.loads(stored.leaf)
        assert (record["kind"], record["problem"], record["status"]) == (
            "refusal",
            "overloaded",
            503,
        )
        assert (
            runtime.metrics.registry.get_sample_value(
                "gateway_refusals_total", {"direction": "inbound", "problem": "overloaded"}
            )
            == 1
        )
    finally:
        await runtime.close()

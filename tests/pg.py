"""A throwaway PostgreSQL server for tests (the Python twin of ``.ci/postgres.sh``).

:func:`start_postgres` runs ``initdb`` and ``pg_ctl`` into a fresh folder:
trust authentication for 127.0.0.1 alone (the Unix socket is refused), sockets
in that folder, ``fsync=on``, a free port, and a database ``gateway_test``.
The server binaries refuse to run as root; as root they run as ``postgres``,
in a folder under the system temporary directory that user can reach.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
DATABASE = "gateway_test"


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH first, then Debian's."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [entry for entry in debian.iterdir() if entry.name.isdigit()]
        candidates += [entry / "bin" for entry in sorted(versions, key=lambda e: -int(e.name))]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in SERVER_PROGRAMS):
            return folder
    return None


_WATCHDOG = """
import os, shutil, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
pg_ctl, data, base, *owner = sys.argv[1:]
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run([*owner, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
shutil.rmtree(base, ignore_errors=True)
"""


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], cwd: Path, log: Path, stdin: str | None = None) -> None:
    with log.open("ab") as out:
        result = subprocess.run(
            _as_owner(command),
            cwd=cwd,
            input=None if stdin is None else stdin.encode(),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=120,
        )
    if result.returncode != 0:
        output = log.read_text(errors="replace")
        raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}):\n{output}")


def start_postgres(tmpdir: Path) -> tuple[str, Callable[[], None]]:
    """Start a server; its URL (database ``gateway_test``) and a callable that stops it."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found")
    if os.geteuid() == 0:
        # pytest's folders are private to root: the postgres user could not enter them.
        base = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        shutil.chown(base, "postgres", "postgres")
    else:
        base = Path(tempfile.mkdtemp(prefix="gateway-pg-", dir=tmpdir))
    data, log = base / "data", base / "server.log"
    # The watchdog stops the server and deletes the folder when its stdin closes:
    # when stop() closes it, or when this process dies without running stop().
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WATCHDOG,
            str(bin_dir / "pg_ctl"),
            str(data),
            str(base),
            *_as_owner([]),
        ],
        stdin=subprocess.PIPE,
        cwd=base,
        start_new_session=True,  # a Ctrl-C meant for pytest leaves it to clean up
    )

    def stop() -> None:
        if watchdog.stdin is not None and not watchdog.stdin.closed:
            watchdog.stdin.close()
        watchdog.wait(timeout=120)

    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth=reject",
                "--no-sync",
            ],
            base,
            base / "initdb.log",
        )
        # Single-user mode needs no client program.
        _run(
            [str(bin_dir / "postgres"), "--single", "-D", str(data), "postgres"],
            base,
            base / "createdb.log",
            stdin=f"CREATE DATABASE {DATABASE}\n",
        )
        hba = "host all all 127.0.0.1/32 trust\n"
        # Overwriting keeps the file's owner (postgres, when we are root).
        (data / "pg_hba.conf").write_text(hba)
        port = _start_server(bin_dir, base, data, log)
    except BaseException:
        stop()
        raise
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}", stop


def _start_server(bin_dir: Path, base: Path, data: Path, log: Path) -> int:
    # A port free when probed may be taken before the server binds it: retry.
    for attempt in range(3):
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base}"
            " -c fsync=on -c synchronous_commit=on"
        )
        command = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
        try:
            _run([*command, "-o", options, "start"], base, base / "pg_ctl.log")
        except RuntimeError:
            if attempt == 2:
                raise
        else:
            return port
    raise AssertionError("unreachable")


if __name__ == "__main__":  # manual use: print a URL, stop on Enter
    url, stop_server = start_postgres(Path(tempfile.gettempdir()))
    print(url)
    try:
        input("Enter stops the server. ")
    finally:
        stop_server()

"""The directory watch: a reload sweeps the contract folder only when something may have changed."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.dirwatch import LOCAL_FILESYSTEMS, DirectoryWatch, filesystem_type

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
30 22 0:40 / /srv/contracts rw,relatime shared:9 master:3 - nfs4 server:/export rw
31 22 0:41 / /srv/my\\040folder rw - tmpfs tmpfs rw
32 22 0:42 / /srv/contracts/local rw - xfs /dev/sdb1 rw
33 22 0:43 / /srv/my\\040folder rw - nfs server:/other rw
not a mountinfo line
34 22 0:44 / /broken rw -
"""

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inotify is Linux's; elsewhere every reload sweeps"
)


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "ext4"),
        ("/etc/gateway", "ext4"),
        ("/srv/contracts", "nfs4"),
        ("/srv/contracts/agency-a", "nfs4"),
        ("/srv/contractsX", "ext4"),  # a prefix of the name, not of the path
        ("/srv/contracts/local/x", "xfs"),  # the deeper mount holds it
        ("/srv/my folder/contracts", "nfs"),  # escaped space; the later mount is on top
        ("/proc/self", "proc"),
    ],
)
def test_filesystem_type_of_the_longest_mount_point(path: str, expected: str) -> None:
    """The mount whose point is the longest prefix of the path, by whole segments."""
    assert filesystem_type(Path(path), MOUNTINFO) == expected


def test_filesystem_type_without_a_parsable_line() -> None:
    """No line that parses: unknown, so the watch is not trusted."""
    assert filesystem_type(Path("/x"), "garbage\n34 22 0:44 / /x rw -\n") is None


def test_network_file_systems_are_not_trusted() -> None:
    """Another host's writes to a network file system raise no event here."""
    assert not {"nfs", "nfs4", "cifs", "smb3", "fuse", "9p"} & LOCAL_FILESYSTEMS


def _assert_sweeps_every_time(watch: DirectoryWatch) -> None:
    """No kernel watch: a sweep is due even right after one."""
    assert not watch.kernel_told
    watch.swept(linked=False)
    assert watch.sweep_due()


@pytest.fixture
def watched(tmp_path: Path) -> tuple[Path, DirectoryWatch, FakeClock]:
    """A folder with one file, its watch after a first sweep, and the watch's clock."""
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "a.yaml").write_text("a: 1\n", encoding="utf-8")
    clock = FakeClock()
    watch = DirectoryWatch(folder, clock=clock)
    assert watch.sweep_due()  # nothing is known before the first sweep
    watch.swept(linked=False)
    return folder, watch, clock


def _write_in_place(folder: Path) -> None:
    with (folder / "a.yaml").open("r+b") as handle:
        handle.write(b"b")


def _append(folder: Path) -> None:
    with (folder / "a.yaml").open("a", encoding="utf-8") as handle:
        handle.write("b: 2\n")


def _move_in(folder: Path) -> None:
    outside = folder.parent / "new.yaml"
    outside.write_text("n: 1\n", encoding="utf-8")
    outside.rename(folder / "new.yaml")


CHANGES: dict[str, Callable[[Path], object]] = {
    "created": lambda folder: (folder / "b.yaml").write_text("b: 1\n", encoding="utf-8"),
    "written in place": _write_in_place,
    "appended to": _append,
    "truncated": lambda folder: os.truncate(folder / "a.yaml", 0),
    "mode changed": lambda folder: (folder / "a.yaml").chmod(0o600),
    "times changed": lambda folder: os.utime(folder / "a.yaml", ns=(1, 1)),
    "renamed": lambda folder: (folder / "a.yaml").rename(folder / "c.yaml"),
    "moved in": _move_in,
    "moved out": lambda folder: (folder / "a.yaml").rename(folder.parent / "a.yaml"),
    "deleted": lambda folder: (folder / "a.yaml").unlink(),
    "linked": lambda folder: (folder / "l.yaml").symlink_to(folder / "a.yaml"),
}


@linux_only
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_kind_of_change_makes_a_sweep_due(
    watched: tuple[Path, DirectoryWatch, FakeClock], change: str
) -> None:
    """Any change of an entry is reported; once swept, the folder is quiet again."""
    folder, watch, _ = watched
    assert watch.kernel_told
    assert not watch.sweep_due()
    CHANGES[change](folder)
    assert watch.sweep_due()
    assert watch.sweep_due()  # still due: news stays until a sweep is recorded
    watch.swept(linked=False)
    assert not watch.sweep_due()


@linux_only
def test_a_change_during_a_sweep_is_news_at_the_next_ask(
    watched: tuple[Path, DirectoryWatch, FakeClock],
) -> None:
    """Asked before the sweep and told after it: a change in between is not lost."""
    folder, watch, _ = watched
    assert not watch.sweep_due()
    _write_in_place(folder)  # while the caller is sweeping
    watch.swept(linked=False)
    assert watch.sweep_due()


@linux_only
def test_a_full_sweep_comes_due_anyway(watched: tuple[Path, DirectoryWatch, FakeClock]) -> None:
    """Every full_sweep_seconds the folder is swept, whatever the kernel said."""
    _, watch, clock = watched
    clock.now += watch.full_sweep_seconds - 1
    assert not watch.sweep_due()
    clock.now += 1
    assert watch.sweep_due()
    watch.swept(linked=False)
    assert not watch.sweep_due()


@linux_only
def test_a_symbolic_link_in_the_folder_means_every_reload_sweeps(
    watched: tuple[Path, DirectoryWatch, FakeClock],
) -> None:
    """A write to a link's target elsewhere raises no event in the folder."""
    _, watch, _ = watched
    watch.swept(linked=True)
    assert watch.sweep_due()
    watch.swept(linked=False)
    assert not watch.sweep_due()


@linux_only
def test_a_removed_folder_ends_the_watch(
    watched: tuple[Path, DirectoryWatch, FakeClock],
) -> None:
    """Once the folder is gone the kernel cannot tell any more: every reload sweeps."""
    folder, watch, _ = watched
    (folder / "a.yaml").unlink()
    folder.rmdir()
    assert watch.sweep_due()
    _assert_sweeps_every_time(watch)


@linux_only
def test_an_overflowed_queue_ends_the_watch(
    watched: tuple[Path, DirectoryWatch, FakeClock],
) -> None:
    """More events than the kernel queues: some were lost, so it is not trusted again."""
    folder, watch, _ = watched
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text(encoding="ascii"))
    (folder / "b.yaml").write_text("b: 1\n", encoding="utf-8")
    for number in range(limit + 2):
        # Alternating files: the kernel merges an event equal to the one before it.
        os.utime(folder / ("a.yaml" if number % 2 else "b.yaml"), ns=(number, number))
    assert watch.sweep_due()
    _assert_sweeps_every_time(watch)


def test_an_untrusted_file_system_is_swept_every_time(tmp_path: Path) -> None:
    """Where the file system is not trusted there is no watch, and every reload sweeps."""
    watch = DirectoryWatch(tmp_path, trusted=frozenset())
    _assert_sweeps_every_time(watch)


@linux_only
def test_a_folder_reached_through_a_link_is_swept_every_time(tmp_path: Path) -> None:
    """The link may be switched to another folder (a release) with no event in this one."""
    release = tmp_path / "release-1"
    release.mkdir()
    (tmp_path / "contracts").symlink_to(release)
    assert DirectoryWatch(release).kernel_told
    watch = DirectoryWatch(tmp_path / "contracts")
    _assert_sweeps_every_time(watch)


def test_a_missing_folder_is_swept_every_time(tmp_path: Path) -> None:
    """A folder that does not exist yet: no watch (the loader reports the folder)."""
    watch = DirectoryWatch(tmp_path / "missing")
    _assert_sweeps_every_time(watch)


@linux_only
def test_close_from_another_thread_stops_the_watch(
    watched: tuple[Path, DirectoryWatch, FakeClock],
) -> None:
    """Closed (twice, from another thread), the watch frees its descriptor and sweeps always."""
    _, watch, _ = watched
    closer = threading.Thread(target=lambda: (watch.close(), watch.close()))
    closer.start()
    closer.join()
    _assert_sweeps_every_time(watch)

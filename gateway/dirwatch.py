"""When a directory must be swept to find changes: told by the kernel, not found by polling.

The gateway finds a changed contract file by a ``stat`` of every entry of
the contract directory each ``reload_seconds``. With 10,000 files that sweep
costs 50-110 ms of CPU on the benchmark machine (docs/performance.md, change
35): 1-2 % of a core when idle, and up to a tenth of an exchange's cost when
the gateway shares the machine. On Linux, inotify tells the process when an
entry is created, written, deleted, renamed or changes attributes, so a
reload with no news costs one non-blocking ``read``.

The kernel is trusted only where it sees every change: a local file system
(:data:`LOCAL_FILESYSTEMS`; a network file system does not report another
host's writes), a directory not reached through a symbolic link (the link
may be switched to another directory) and entries that are not symbolic
links (a write to a link's target elsewhere is not an event of this
directory). Anywhere else, and
whenever the kernel lost track (its queue overflowed, the directory was
removed or unmounted), every reload sweeps, as without a watch. Every
:data:`FULL_SWEEP_SECONDS` it sweeps anyway, so a change the kernel did not
report is still found.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Final

# The longest a change may go unseen where the kernel did not report it.
FULL_SWEEP_SECONDS: Final = 60.0

# File systems whose changes inotify reports, whoever makes them.
LOCAL_FILESYSTEMS: Final = frozenset(
    {"bcachefs", "btrfs", "ext2", "ext3", "ext4", "f2fs", "jfs", "overlay", "tmpfs", "xfs", "zfs"}
)

# <sys/inotify.h>: what is watched, and what says the watch or its queue is gone.
_IN_MODIFY: Final = 0x002
_IN_ATTRIB: Final = 0x004
_IN_CLOSE_WRITE: Final = 0x008
_IN_MOVED_FROM: Final = 0x040
_IN_MOVED_TO: Final = 0x080
_IN_CREATE: Final = 0x100
_IN_DELETE: Final = 0x200
_IN_DELETE_SELF: Final = 0x400
_IN_MOVE_SELF: Final = 0x800
_IN_UNMOUNT: Final = 0x2000
_IN_Q_OVERFLOW: Final = 0x4000
_IN_IGNORED: Final = 0x8000
_IN_ONLYDIR: Final = 0x01000000
_WATCHED: Final = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_LOST: Final = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_Q_OVERFLOW | _IN_IGNORED
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_BYTES: Final = 64 * 1024


def filesystem_type(directory: Path, mountinfo: str) -> str | None:
    """The type of the file system holding ``directory`` (a resolved path), from ``mountinfo``.

    ``mountinfo`` is the text of ``/proc/self/mountinfo``; the mount whose
    mount point is the longest prefix of ``directory`` holds it. None when
    no line parses.
    """
    best: tuple[int, str] | None = None
    target = str(directory)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) <= separator + 1:
            continue
        # Octal escapes (a space is \040) as the kernel writes them.
        point = fields[4].encode("ascii", "backslashreplace").decode("unicode_escape")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fields[separator + 1])
    return None if best is None else best[1]


class DirectoryWatch:
    """Says whether a directory must be swept (each entry ``stat``-ed) to find changes.

    Ask :meth:`sweep_due` before a sweep and tell :meth:`swept` after it: a
    change during the sweep then shows at the next ask. One caller at a
    time; :meth:`close` may come from another thread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        full_sweep_seconds: float = FULL_SWEEP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        trusted: frozenset[str] = LOCAL_FILESYSTEMS,
    ) -> None:
        """Watch ``directory`` where it is on a file system in ``trusted``."""
        self.full_sweep_seconds = full_sweep_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._swept_at: float | None = None
        self._linked = False
        self._news = True  # nothing is known until the first sweep
        self._fd = _open_inotify(directory, trusted)
        self._closer = weakref.finalize(self, os.close, self._fd) if self._fd >= 0 else None

    @property
    def kernel_told(self) -> bool:
        """Whether the kernel reports this directory's changes (else every reload sweeps)."""
        return self._fd >= 0

    def sweep_due(self) -> bool:
        """True when a sweep is needed; False only when nothing can have changed since the last.

        Due when the kernel cannot tell (see the module), an entry was a
        symbolic link at the last sweep, the kernel reported a change or lost
        track, or the last sweep is ``full_sweep_seconds`` old.
        """
        with self._lock:
            if self._fd >= 0:
                self._news = self._drain() or self._news
            if self._fd < 0 or self._linked or self._news or self._swept_at is None:
                return True
            return self._clock() - self._swept_at >= self.full_sweep_seconds

    def swept(self, *, linked: bool) -> None:
        """Record a sweep just made; ``linked``: whether any entry was a symbolic link."""
        with self._lock:
            self._swept_at, self._linked, self._news = self._clock(), linked, False

    def close(self) -> None:
        """Stop watching; every later :meth:`sweep_due` is True. Idempotent."""
        with self._lock:
            self._lose()

    def _drain(self) -> bool:
        # Any event is news; an event saying the watch is gone also ends it.
        news = False
        while True:
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                return news
            except OSError:
                self._lose()
                return True
            news = news or bool(data)
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                if mask & _LOST:
                    self._lose()
                    return True
                offset += _EVENT.size + length

    def _lose(self) -> None:
        if self._closer is not None:
            self._closer()
        self._fd = -1


def _open_inotify(directory: Path, trusted: frozenset[str]) -> int:
    """An inotify descriptor watching ``directory``, or -1 where the kernel cannot be trusted."""
    if not sys.platform.startswith("linux"):
        return -1
    try:
        resolved = directory.resolve(strict=True)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            kind = filesystem_type(resolved, handle.read())
    except OSError:
        return -1
    # Reached through a symbolic link, the folder can be swapped for another
    # (a release switched by ``ln -sfn``) with no event in the one watched.
    if kind not in trusted or str(resolved) != os.path.abspath(directory):
        return -1
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:  # EMFILE: the user's inotify instances are used up
        return -1
    path = os.fsencode(resolved)
    if libc.inotify_add_watch(fd, ctypes.c_char_p(path), ctypes.c_uint32(_WATCHED)) < 0:
        os.close(fd)
        return -1
    return fd

"""The C allocator of a ``gateway serve`` process: large buffers go back to the system.

glibc maps an allocation of its own when it is larger than a threshold, and
unmaps it when freed. The threshold starts at 128 KiB but rises to the size
of any mapped block that is freed, up to 32 MiB: after one large exchange,
the buffers of the next (sealed messages, their JSON) come from the heap,
where freed space stays resident, and the process keeps the high-water mark
of every large exchange it has served. A fixed threshold of 4 MiB keeps such
buffers mapped: an 8 MiB exchange peaked 25 % lower in the benchmark (change
17 in docs/performance.md), and its memory is returned when it ends. Below
4 MiB nothing changes; in particular the event loop's read buffers stay on
the heap, where a threshold of 128 KiB cost a third more CPU per exchange.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final

# mallopt(3) parameter number of M_MMAP_THRESHOLD in glibc's <malloc.h>.
_M_MMAP_THRESHOLD: Final = -3
LARGE_BUFFER_BYTES: Final = 4 * 1024 * 1024
# The operator's own setting, read by glibc at start-up, wins over ours.
THRESHOLD_ENVIRONMENT: Final = "MALLOC_MMAP_THRESHOLD_"


def map_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`LARGE_BUFFER_BYTES`; whether it was set.

    Nothing is changed under another C library (musl, macOS) or when the
    environment sets ``MALLOC_MMAP_THRESHOLD_``.
    """
    if THRESHOLD_ENVIRONMENT in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))

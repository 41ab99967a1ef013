"""gateway.allocator: a large freed buffer is returned to the system, not kept in the heap.

Each case runs in a fresh interpreter: the allocator's setting is for the
whole process and cannot be undone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.allocator import THRESHOLD_ENVIRONMENT

# A mapped 16 MiB block freed raises glibc's dynamic threshold past 8 MiB; the
# next 8 MiB buffer then comes from the heap, pinned there by a smaller block
# after it. How much resident memory does freeing that buffer give back?
_PROBE = """
import os, sys
from gateway.allocator import map_large_buffers

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

tuned = map_large_buffers() if sys.argv[1] == "tuned" else False
first = bytearray(16 << 20)
del first
buffer = bytearray(8 << 20)
pin = bytearray(1 << 20)
before = resident_mib()
del buffer
print(tuned, round(before - resident_mib(), 1))
"""

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc"
)


def _probe(mode: str, **environment: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k != THRESHOLD_ENVIRONMENT} | environment
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    tuned, returned = done.stdout.split()
    return tuned, float(returned)


def test_a_freed_large_buffer_is_returned() -> None:
    """Tuned, freeing the 8 MiB buffer gives its 8 MiB back; untuned, the heap keeps it."""
    tuned, returned = _probe("tuned")
    assert tuned == "True"
    assert returned >= 7.5
    tuned, returned = _probe("untuned")
    assert tuned == "False"
    assert returned < 1


def test_the_operators_setting_wins() -> None:
    """With MALLOC_MMAP_THRESHOLD_ set, nothing is changed: glibc already follows it."""
    tuned, _ = _probe("tuned", **{THRESHOLD_ENVIRONMENT: str(64 << 20)})
    assert tuned == "False"

"""The JSON bodies of the exchange benchmark: a request and a backend record of N bytes.

Both are compact JSON objects of exactly ``size`` bytes shaped like agency
data: a few scalar members and an array of ~130-byte entries (an income
history on the way back, search criteria on the way in), padded with one
``note`` string to the exact size. Large payloads are therefore many small
objects, as real records are, not one long string: parsing, filtering and
serialising them costs what it would in production.

The request names the size of the record it wants back in ``record_bytes``,
so one backend serves every payload size without being restarted, and the
same request goes through A, B and C unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Final

NATIONAL_ID: Final = "30008024773"
YEAR: Final = 2025
EMPLOYER: Final = "Harbour Logistics"

# The bench contract releases exactly these paths, so the provider's filter
# walks every entry and removes nothing, and the consumer's check finds no leak.
RECORD_FIELDS: Final = (
    "national_id",
    "year",
    "taxable_income",
    "tax_paid",
    "employer",
    "note",
    "entries[].month",
    "entries[].amount",
    "entries[].payer",
    "entries[].reference",
)

MIN_SIZE: Final = 256
MAX_SIZE: Final = 64 * 1024 * 1024


def compact(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the backend sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _fill(document: dict[str, Any], entry: Any, size: int) -> bytes:
    """``document`` with entries appended and a ``note`` padded to exactly ``size`` bytes."""
    entries: list[Any] = document["entries"]
    document["note"] = ""
    base = len(compact(document))
    if base > size:
        raise ValueError(f"{size} bytes is too small for the record's fixed members")
    one = len(compact(entry(0)))
    # Each entry adds its own bytes and one comma (the first adds none).
    count = max(0, (size - base) // (one + 1))
    entries.extend(entry(n) for n in range(count))
    while entries and len(compact(document)) > size:
        entries.pop()
    document["note"] = "x" * (size - len(compact(document)))
    data = compact(document)
    if len(data) != size:  # pragma: no cover - the arithmetic above is exact for ASCII
        raise RuntimeError(f"built {len(data)} bytes instead of {size}")
    return data


def _income_entry(n: int) -> dict[str, Any]:
    return {
        "month": f"{2000 + n // 12 % 26:04d}-{n % 12 + 1:02d}",
        "amount": 2000 + (n * 7919) % 3000,
        "payer": EMPLOYER,
        "reference": f"PAY-{n:010d}-{(n * 2654435761) % 10**12:012d}",
    }


def _criterion(n: int) -> dict[str, Any]:
    return {
        "month": f"{2000 + n // 12 % 26:04d}-{n % 12 + 1:02d}",
        "kind": "income",
        "source": "employer-declaration",
        "reference": f"REQ-{n:010d}-{(n * 40503) % 10**12:012d}",
    }


def record_bytes(size: int) -> bytes:
    """The backend's record of exactly ``size`` bytes (every member is in the contract)."""
    document: dict[str, Any] = {
        "national_id": NATIONAL_ID,
        "year": YEAR,
        "taxable_income": 32294,
        "tax_paid": 7104,
        "employer": EMPLOYER,
        "entries": [],
    }
    return _fill(document, _income_entry, size)


def request_bytes(size: int, record_size: int | None = None) -> bytes:
    """The client's request of exactly ``size`` bytes, asking for a record of ``record_size``."""
    document: dict[str, Any] = {
        "national_id": NATIONAL_ID,
        "year": YEAR,
        "record_bytes": size if record_size is None else record_size,
        "entries": [],
    }
    return _fill(document, _criterion, size)


def parse_size(text: str) -> int:
    """``1K``, ``64K``, ``1M``, ``8M`` or a plain byte count, as bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": 1024 * 1024}
    try:
        value = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (write 1K, 64K, 1M or bytes)") from None
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise ValueError(f"a payload must be {MIN_SIZE} bytes to {MAX_SIZE // 2**20} MiB")
    return value


def size_label(size: int) -> str:
    """``1 KiB``, ``64 KiB``, ``1 MiB``..."""
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"

"""Synthetic agency backends for the demo: a population register and tax records.

Deterministic fake people (a fixed seed), so every run and every test sees
the same records. The backends answer like real ones: JSON objects, and 404
with a JSON body when there is no such record.
"""

from __future__ import annotations

import random
from typing import Any, Final

from aiohttp import web

PERSON_COUNT: Final = 300
_SEED: Final = 20261126

_FIRST = ("Mari", "Jaan", "Liis", "Andres", "Kati", "Peeter", "Anu", "Toomas", "Eva", "Mart")
_LAST = ("Tamm", "Saar", "Sepp", "Mägi", "Kask", "Kukk", "Rebane", "Ilves", "Pärn", "Koppel")
_CITIES = (
    ("Tallinn", "Harju"),
    ("Tartu", "Tartu"),
    ("Pärnu", "Pärnu"),
    ("Narva", "Ida-Viru"),
    ("Viljandi", "Viljandi"),
)
_STREETS = ("Pikk", "Lai", "Vabaduse", "Kooli", "Aia", "Mere", "Jaama", "Posti")
_EMPLOYERS = ("Harbour Logistics", "City Hospital", "North Software", "Baltic Foods", "Self")


def _people() -> dict[str, dict[str, Any]]:
    rng = random.Random(_SEED)  # noqa: S311 - synthetic demo data, not a secret
    people: dict[str, dict[str, Any]] = {}
    while len(people) < PERSON_COUNT:
        year, month, day = rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28)
        national_id = (
            f"{rng.choice('3456')}{year % 100:02d}{month:02d}{day:02d}{rng.randint(0, 9999):04d}"
        )
        city, municipality = rng.choice(_CITIES)
        people[national_id] = {
            "national_id": national_id,
            "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "birth_date": f"{year:04d}-{month:02d}-{day:02d}",
            "address": {
                "street": f"{rng.choice(_STREETS)} {rng.randint(1, 120)}",
                "city": city,
                "postcode": f"{rng.randint(10000, 99999)}",
            },
            "municipality": municipality,
            "_income": rng.randint(0, 90_000),
            "_employer": rng.choice(_EMPLOYERS),
            "_iban": f"EE{rng.randint(10, 99)}{rng.randint(10**15, 10**16 - 1)}",
        }
    return people


PEOPLE: Final = _people()
SUBJECTS: Final = tuple(PEOPLE)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}')
    return body


async def person_basic(request: web.Request) -> web.Response:
    """The population register: a person's basic record by national id."""
    body = await _json_body(request)
    person = PEOPLE.get(str(body.get("national_id")))
    if person is None:
        return web.json_response({"error": "no such person"}, status=404)
    return web.json_response({k: v for k, v in person.items() if not k.startswith("_")})


async def income_records(request: web.Request) -> web.Response:
    """The tax authority: a person's income record for a year."""
    body = await _json_body(request)
    person = PEOPLE.get(str(body.get("national_id")))
    year = body.get("year", 2025)
    if person is None or not isinstance(year, int):
        return web.json_response({"error": "no such record"}, status=404)
    income = person["_income"]
    return web.json_response(
        {
            "national_id": person["national_id"],
            "year": year,
            "taxable_income": income,
            "tax_paid": income * 22 // 100,
            "employer": person["_employer"],
            "bank_account": person["_iban"],
        }
    )


def backend_app(service: str) -> web.Application:
    """The backend application of ``service`` (``person-basic`` or ``income-records``)."""
    handlers = {"person-basic": person_basic, "income-records": income_records}
    app = web.Application()
    app.router.add_post(f"/{service}", handlers[service])
    return app

"""The floors: the least a CDS service in this stack can do with a hook call.

Flask under the same gunicorn settings as `ketamine-cds serve` (gthread workers, 4 threads). The POST
endpoint reads the body, parses it into Python objects and answers `{"cards": []}`: the unavoidable cost
of receiving and parsing the request, against which the service is compared. `BENCH_FLOOR_PARSER` picks
the parser, so the service can be set beside the standard library and the two fastest JSON parsers on
PyPI:

    json     `json.loads` (the standard library; the floor the targets are stated against)
    orjson   `orjson.loads`
    msgspec  `msgspec.json.decode` into plain dicts and lists (no schema: parse only)

With `BENCH_FLOOR_FETCH=1` it is the floor of the FHIR fallback instead: for a hook call without prefetch
it runs the same searches the service would (order-select's prefetch templates, `_count` at the service's
page size, every `next` page followed, up to as many searches at once as the service runs) against the
call's `fhirServer` with its bearer token, parses every page with `json.loads` and answers no cards. What
is left is the FHIR server's own time and the transfer: the least any service fetching this chart from this
server could take.

Run by bench/run.py as

    BENCH_FLOOR_PARSER=orjson gunicorn -k gthread --threads 4 -w 2 -b 127.0.0.1:PORT bench.floor_app:app
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import orjson
import requests
from flask import Flask, Response, request

from cds.config import Settings
from cds.fhir.prefetch import MAX_PARALLEL_FETCHES

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "json": json.loads,
    "orjson": orjson.loads,
    "msgspec": msgspec.json.decode,
}
PARSE = PARSERS[os.environ.get("BENCH_FLOOR_PARSER", "json")]

FETCH = os.environ.get("BENCH_FLOOR_FETCH") == "1"
TEMPLATES: dict[str, str] = json.loads(
    (Path(__file__).resolve().parents[1] / "hooks" / "order-select.json").read_text(encoding="utf-8")
)["prefetch"]
PAGE_SIZE = Settings().fhir_page_size
SESSION = requests.Session()  # one connection pool for every thread, as the service's FHIR client has

app = Flask("floor")


def _search(url: str, headers: dict[str, str]) -> int:
    """Every page of one search (or one read); the number of pages."""
    pages = 0
    next_url: str | None = url
    while next_url:
        reply = SESSION.get(next_url, headers=headers, timeout=10)
        reply.raise_for_status()
        page = json.loads(reply.content)
        pages += 1
        links = page.get("link", []) if page.get("resourceType") == "Bundle" else []
        next_url = next((link["url"] for link in links if link.get("relation") == "next"), None)
    return pages


def _fetch_chart(body: dict[str, Any]) -> None:
    base = body["fhirServer"].rstrip("/")
    headers = {"Accept": "application/fhir+json"}
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    patient = body["context"]["patientId"]
    urls = [
        f"{base}/"
        + re.sub(r"_count=\d+", f"_count={PAGE_SIZE}", template.replace("{{context.patientId}}", patient))
        for template in TEMPLATES.values()
    ]
    with ThreadPoolExecutor(max_workers=min(len(urls), MAX_PARALLEL_FETCHES)) as pool:
        list(pool.map(lambda url: _search(url, headers), urls))


@app.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:  # noqa: ARG001 (the route names it)
    body = PARSE(request.get_data(cache=False))
    if not isinstance(body, dict):
        return Response('{"error":"not an object"}', status=400, content_type="application/json")
    if FETCH:
        _fetch_chart(body)
    return Response('{"cards":[]}', content_type="application/json")


@app.get("/healthz")
def health() -> Response:
    return Response('{"status":"ok"}', content_type="application/json")

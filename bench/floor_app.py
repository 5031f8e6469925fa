"""The floors: the least a CDS service in this stack can do with a hook call.

Flask under the same gunicorn settings as `ketamine-cds serve` (gthread workers, 4 threads). The POST
endpoint reads the body, parses it into Python objects and answers `{"cards": []}`: the unavoidable cost
of receiving and parsing the request, against which the service is compared. `BENCH_FLOOR_PARSER` picks
the parser, so the service can be set beside the standard library and the two fastest JSON parsers on
PyPI:

    json     `json.loads` (the standard library; the floor the targets are stated against)
    orjson   `orjson.loads`
    msgspec  `msgspec.json.decode` into plain dicts and lists (no schema: parse only)

Run by bench/run.py as

    BENCH_FLOOR_PARSER=orjson gunicorn -k gthread --threads 4 -w 2 -b 127.0.0.1:PORT bench.floor_app:app
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from flask import Flask, Response, request

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "json": json.loads,
    "orjson": orjson.loads,
    "msgspec": msgspec.json.decode,
}
PARSE = PARSERS[os.environ.get("BENCH_FLOOR_PARSER", "json")]

app = Flask("floor")


@app.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:  # noqa: ARG001 (the route names it)
    body = PARSE(request.get_data(cache=False))
    if not isinstance(body, dict):
        return Response('{"error":"not an object"}', status=400, content_type="application/json")
    return Response('{"cards":[]}', content_type="application/json")


@app.get("/healthz")
def health() -> Response:
    return Response('{"status":"ok"}', content_type="application/json")

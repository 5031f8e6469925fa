"""The floor: the least a CDS service in this stack can do with a hook call.

Flask under the same gunicorn settings as `ketamine-cds serve` (gthread workers, 4 threads). The POST
endpoint reads the body, `json.loads` it and answers `{"cards": []}`: the unavoidable cost of receiving and
parsing the request, against which the service is compared. Run by bench/run.py as

    gunicorn -k gthread --threads 4 -w 2 -b 127.0.0.1:PORT bench.floor_app:app
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

app = Flask("floor")


@app.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:  # noqa: ARG001 (the route names it)
    body = json.loads(request.get_data(cache=False))
    if not isinstance(body, dict):
        return Response('{"error":"not an object"}', status=400, content_type="application/json")
    return Response('{"cards":[]}', content_type="application/json")


@app.get("/healthz")
def health() -> Response:
    return Response('{"status":"ok"}', content_type="application/json")

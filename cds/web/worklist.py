"""`GET /worklist?from=YYYY-MM-DD&days=N&format=json|csv|html`: the pre-session worklist over HTTP.

Enabled when `KETAMINE_CDS_WORKLIST_CONFIG` names the worklist's configuration file (the same file as the
command's, read and checked at start-up). In production it takes the same client authentication as the
analytics endpoint (a JWT from a trusted issuer, audience this URL); answers are never cached.
"""

from __future__ import annotations

from datetime import date

from flask import Blueprint, Response, current_app, request

from cds.errors import BadRequest, FhirError, Issue, NotFound, UpstreamUnavailable
from cds.web.api import runtime
from cds.worklist.command import MAX_DAYS, build_worklist
from cds.worklist.config import WorklistConfig
from cds.worklist.render import FORMATS, render_worklist

EXTENSION = "ketamine_cds_worklist"
CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
}

bp = Blueprint("worklist", __name__)


@bp.before_request
def _authenticate() -> None:
    runtime().authenticate(request)


@bp.get("/worklist")
def worklist() -> Response:
    config: WorklistConfig | None = current_app.extensions.get(EXTENSION)
    if config is None:
        raise NotFound("the worklist is not configured on this service")
    first_raw = request.args.get("from", "")
    try:
        first_day = date.fromisoformat(first_raw)
    except ValueError:
        raise BadRequest(
            "from must be a date (YYYY-MM-DD)", issues=[Issue("value", "not a date", "from")]
        ) from None
    days_raw = request.args.get("days", "1")
    if not days_raw.isdigit() or not 1 <= int(days_raw) <= MAX_DAYS:
        raise BadRequest(
            f"days must be a whole number from 1 to {MAX_DAYS}",
            issues=[Issue("value", f"not a whole number from 1 to {MAX_DAYS}", "days")],
        )
    fmt = request.args.get("format", "json")
    if fmt not in FORMATS:
        raise BadRequest(
            f"format must be one of {', '.join(FORMATS)}", issues=[Issue("value", "unknown format", "format")]
        )
    rt = runtime()
    try:
        result = build_worklist(
            config, first_day, int(days_raw), knowledge=rt.knowledge, clock=rt.clock, settings=rt.settings
        )
    except FhirError as exc:  # finding the sessions failed: no list rather than an incomplete one
        raise UpstreamUnavailable(f"the worklist's FHIR server could not be read: {exc.message}") from None
    return Response(render_worklist(result, fmt), content_type=CONTENT_TYPES[fmt])

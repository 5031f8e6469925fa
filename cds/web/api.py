"""HTTP edge: discovery, service calls, feedback, health. Parse -> screen -> respond; no clinical logic.

Every error leaves through `_error_response`, the one place the exception tree becomes HTTP: a status and
an OperationOutcome naming the failing JSON path (and Retry-After on a 503). Nothing of the caller's data,
no request path, no stack trace and no token is ever echoed or logged.

Each call gets one :class:`~cds.web.runtime.CallRecord`, created before the handler runs and handed to
the runtime explicitly for the audit line; ``flask.g`` holds only that record.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from jsonschema import Draft202012Validator
from werkzeug.exceptions import HTTPException

from cds import jsontext
from cds.errors import (
    BadRequest,
    CdsError,
    Issue,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMedia,
    operation_outcome,
)
from cds.report import render_report
from cds.storage.analytics import override_report
from cds.storage.store import FeedbackItem
from cds.web import screens
from cds.web.runtime import CallRecord, Runtime
from cds.web.validation import check_hook_call, read_json_object

log = logging.getLogger("cds.web.api")
audit_log = logging.getLogger("cds.audit")

bp = Blueprint("cds", __name__)

JSON = "application/json"


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["ketamine_cds"]
    return found


def _json_response(payload: Any, status: int = 200, content_type: str = JSON) -> Response:
    return Response(jsontext.encode(payload), status=status, content_type=content_type)


def current_call() -> CallRecord:
    """This request's call record (made in `_before`; a bare one if the request failed before that)."""
    call = g.get("call")
    if not isinstance(call, CallRecord):
        call = g.call = CallRecord(started=time.perf_counter())
    return call


def _error_response(exc: CdsError) -> Response:
    response = _json_response(operation_outcome(exc.issues), exc.status, "application/fhir+json")
    if isinstance(exc, ServiceUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _read_json(validator: Draft202012Validator) -> dict[str, Any]:
    rt = runtime()
    mimetype = request.mimetype or ""
    if mimetype != JSON and not mimetype.endswith("+json"):
        raise UnsupportedMedia("the request body must be application/json")
    length = request.content_length
    if length is not None and length > rt.settings.max_body_bytes:
        raise PayloadTooLarge(f"the request body is over {rt.settings.max_body_bytes} bytes")
    g.body_weight = rt.body_budget.admit(length, rt.settings.request_time_budget_s)
    return read_json_object(request.get_data(cache=False), validator, rt.settings)


# ------------------------------------------------------------------------------------------------ routes


@bp.get("/cds-services")
def discovery() -> Response:
    rt = runtime()
    return _json_response({"services": [s.document for s in rt.knowledge.services.values()]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    rt = runtime()
    call = current_call()
    service = rt.knowledge.services.get(service_id)
    if service is None:
        raise NotFound("no such CDS service")  # the id is not echoed: it is whatever the caller sent
    body = _read_json(rt.knowledge.request_validator)
    check_hook_call(service, body, rt.settings)
    call.hook_instance = body["hookInstance"]
    page = screens.issue(rt, rt.settings.public_base_url or request.host_url)
    result = rt.screener(call.client).screen(service, body, page.links)
    if result.cards:
        screens.keep(rt, call, page, result)
    cards = rt.suppress_repeats(service, body, result)
    call.screened(result, cards)
    rt.record_cards(call, service, body, result, cards)
    return _json_response({"cards": cards})


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    if service_id not in rt.knowledge.services:
        raise NotFound("no such CDS service")
    body = _read_json(rt.knowledge.feedback_validator)
    received = datetime.now(UTC)
    items = []
    for index, entry in enumerate(body["feedback"]):
        try:
            outcome_at = datetime.fromisoformat(entry["outcomeTimestamp"].replace("Z", "+00:00"))
            outcome_at = outcome_at.astimezone(UTC)  # 9999-12-31T23:59:59-01:00 is past what UTC can hold
        except (ValueError, OverflowError):
            path = f"$.feedback[{index}].outcomeTimestamp"
            raise BadRequest(
                "outcomeTimestamp is not a valid date-time",
                issues=[Issue("value", "not a valid date-time", path)],
            ) from None
        reason = (entry.get("overrideReason") or {}).get("reason") or {}
        system, code = reason.get("system"), reason.get("code")
        items.append(
            FeedbackItem(
                card_uuid=entry["card"],
                outcome=entry["outcome"],
                override_system=system,
                override_code=code,
                # clients often send code and system only; a reason we offered gets its display back
                override_display=reason.get("display") or rt.knowledge.override_display(system, code),
                user_comment=(entry.get("overrideReason") or {}).get("userComment"),
                accepted_suggestions=tuple(s["id"] for s in entry.get("acceptedSuggestions", [])),
                outcome_at=outcome_at,
                received_at=received,
            )
        )
    current_call().feedback_items = len(items)
    rt.record_feedback(service_id, items)  # durable on return (database, or the local outbox), else 503
    return Response(status=200)


@bp.get("/livez")
def liveness() -> Response:
    """The process answers: restart it only when this fails. Touches no dependency."""
    return _json_response({"status": "alive"})


@bp.get("/readyz")
def readiness() -> Response:
    """Send calls here? 503 naming each failing part (database, redis, shutdown) when not."""
    problems = runtime().readiness()
    if problems:
        return _json_response({"status": "unavailable", "failing": problems}, 503)
    return _json_response({"status": "ready"})


@bp.get("/healthz")
def health() -> Response:
    """Kept for existing probes: readiness, with the mode and the knowledge loaded."""
    rt = runtime()
    problems = rt.readiness()
    payload: dict[str, Any] = {
        "status": "unavailable" if problems else "ok",
        "mode": "development (client authentication OFF)" if rt.settings.dev_mode else "production",
        "services": len(rt.knowledge.services),
        "rules": len(rt.knowledge.rules),
    }
    if problems:
        payload["failing"] = problems
    return _json_response(payload, 503 if problems else 200)


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = runtime().metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/analytics/overrides")
def analytics() -> Response:
    rt = runtime()
    since_raw = request.args.get("since")
    since = None
    if since_raw:
        try:
            since = datetime.fromisoformat(since_raw).replace(tzinfo=UTC)
        except ValueError:
            raise BadRequest(
                "since must be an ISO date", issues=[Issue("value", "not a date", "since")]
            ) from None
    if rt.outbox.healthy:
        rt.flush()  # this process's cards issued moments ago count in the report it is asked for
    report = override_report(rt.store, since, displays=rt.knowledge.override_displays())
    return Response(render_report(report, "json"), content_type=JSON)


# ------------------------------------------------------------------------------------- request plumbing


def _event() -> str | None:
    """What the audit calls this request, or None when it is not audited."""
    if request.path.startswith("/analytics"):
        return "analytics"
    if request.path.startswith("/cds-services") and request.method == "POST":
        return "feedback" if request.path.endswith("/feedback") else "service-call"
    return None


@bp.before_app_request
def _before() -> Response | None:
    rt = runtime()
    service_id = (request.view_args or {}).get("service_id")
    g.call = CallRecord(
        started=time.perf_counter(), event=_event() or "-", service=rt.service_label(service_id)
    )
    if request.method == "OPTIONS":
        return rt.cors.preflight(request)
    if request.path.startswith(("/cds-services", "/analytics")):
        g.call.client = rt.authenticate(request)
    return None


@bp.after_app_request
def _after(response: Response) -> Response:
    rt = runtime()
    rt.cors.decorate(request, response)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    call = current_call()
    if _event() is not None and request.method != "OPTIONS":
        rt.audit(call, response.status_code, time.perf_counter() - call.started)
    return response


@bp.teardown_app_request
def _release_body(_exc: BaseException | None) -> None:
    weight = g.pop("body_weight", 0)
    if weight:
        runtime().body_budget.release(weight)


@bp.app_errorhandler(CdsError)
def _cds_error(exc: CdsError) -> Response:
    if exc.status >= 500:
        log.error("internal error: %s", type(exc).__name__)
    return _error_response(exc)


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    if code == 404:
        return _error_response(NotFound("no such endpoint"))
    if code == 405:
        return _error_response(MethodNotAllowed("method not allowed on this endpoint"))
    if code == 413:
        return _error_response(PayloadTooLarge("the request body is too large"))
    if code < 500:
        return _error_response(BadRequest(exc.description or "bad request"))
    return _error_response(CdsError("internal error"))


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    # Type and location only: exception messages can carry request data.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
    log.error("unexpected %s at %s", type(exc).__name__, where)
    return _error_response(CdsError("internal error"))

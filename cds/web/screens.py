"""The screening page behind every card, and the page about the rules (card.source.url).

A page is addressed by an opaque random id plus a signed, expiring token: no patient data in the URL.
The token is an HMAC over the id and its expiry time, keyed from the service's audit key, so any instance
of one deployment can check it. A wrong, missing or expired token and an unknown id get the same 404, so
nothing reveals whether an id exists. Pages are stored in the service's database (table screen_page),
through the local outbox like the card records, and purged with the other records by the retention rules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request

from cds.clinical.cards import CardLinks
from cds.clinical.screen_record import record_of
from cds.clinical.screening import ScreenResult
from cds.storage.store import ScreenPage

pages = Blueprint("pages", __name__, template_folder="templates")

# A page still on its way from another worker's outbox (shipped every `outbox_interval_s`, 0.2 s by
# default) is waited for this long before the link is answered "not available".
ARRIVAL_WAIT_S = 1.0
ARRIVAL_POLL_S = 0.05

_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'self'"
    ),
}


def _key(audit_key: str) -> bytes:
    """A key for page tokens only, derived so that a token never helps with the audit hashes."""
    return hashlib.sha256(b"ketamine-cds screen page|" + audit_key.encode()).digest()


def sign(audit_key: str, page_id: str, expires: datetime) -> str:
    stamp = str(int(expires.timestamp()))
    mac = hmac.new(_key(audit_key), f"{page_id}.{stamp}".encode(), hashlib.sha256).digest()
    return f"{stamp}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def token_valid(audit_key: str, page_id: str, token: str | None, now: datetime) -> bool:
    if not token or token.count(".") != 1:
        return False
    stamp, _ = token.split(".")
    if not stamp.isdigit() or int(stamp) <= now.timestamp():
        return False
    expected = sign(audit_key, page_id, datetime.fromtimestamp(int(stamp), tz=now.tzinfo))
    return hmac.compare_digest(expected, token)


@dataclass(frozen=True, slots=True)
class IssuedPage:
    id: str
    expires: datetime
    links: CardLinks


def issue(rt: Any, base_url: str) -> IssuedPage:
    """A fresh page id, its signed link and the rules page link, before the cards are rendered."""
    now = rt.clock()
    expires = now + timedelta(hours=rt.knowledge.policy.screen_link_hours)
    page_id = secrets.token_urlsafe(18)
    base = base_url.rstrip("/")
    url = f"{base}/screens/{page_id}?token={sign(rt.hash_key, page_id, expires)}"
    links = CardLinks(
        screen_url=url,
        rules_url=f"{base}/rules",
        smart_launch_url=url if rt.settings.smart_app_registered else None,
    )
    return IssuedPage(page_id, expires, links)


def keep(rt: Any, call: Any, page: IssuedPage, result: ScreenResult) -> None:
    """Store the whole screen behind the cards (before they are answered)."""
    payload = record_of(rt.knowledge, result, rt.clock())
    text = rt.knowledge.page_text
    payload["generated"] = text.fill(
        text.t("generated"),
        when=payload["screened_at"],
        expires=page.expires.strftime(text.t("moment_format")),
    )
    rt.keep_screen_page(call, ScreenPage(page.id, rt.clock(), page.expires, payload))


def _stored_page(rt: Any, page_id: str, now: datetime) -> ScreenPage | None:
    """The page, waiting briefly for it when its signed link is valid but it is still in an outbox: pages
    are shipped to the database moments after their cards leave (this process's now; any other worker's
    within its shipping interval, bounded by ARRIVAL_WAIT_S)."""
    page: ScreenPage | None = rt.store.screen_page(page_id, now)
    if page is not None:
        return page
    if rt.outbox.healthy:
        rt.flush()
    waited = 0.0
    while True:
        page = rt.store.screen_page(page_id, now)
        if page is not None or waited >= ARRIVAL_WAIT_S:
            return page
        time.sleep(ARRIVAL_POLL_S)
        waited += ARRIVAL_POLL_S


def _html(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers.update(_HEADERS)
    return response


def _not_found(rt: Any) -> Response:
    return _html(render_template("not_found.html", t=rt.knowledge.page_text.raw), 404)


@pages.get("/screens/<page_id>")
def screen_page(page_id: str) -> Response:
    rt = current_app.extensions["ketamine_cds"]
    now = rt.clock()
    if len(page_id) > 64 or not token_valid(rt.hash_key, page_id, request.args.get("token"), now):
        return _not_found(rt)
    page = _stored_page(rt, page_id, now)
    if page is None:
        return _not_found(rt)
    return _html(render_template("screen.html", t=rt.knowledge.page_text.raw, page=page.payload))


@pages.get("/rules")
def rules_page() -> Response:
    rt = current_app.extensions["ketamine_cds"]
    knowledge = rt.knowledge
    rules = []
    for rule in knowledge.rules:
        parameters = []
        for name, parameter in rule.parameters.items():
            unit = f" {parameter.unit}" if parameter.unit else ""
            parameters.append(
                knowledge.page_text.fill(
                    knowledge.page_text.t("parameter_line"),
                    description=parameter.description.rstrip("."),
                    value=str(knowledge.policy.value(rule.id, name)),
                    default=str(parameter.default),
                    unit=unit,
                )
            )
        rules.append(
            {
                "id": rule.id,
                "title": rule.title,
                "category": rule.category,
                "parameters": parameters,
                "citations": [{"label": c.label, "url": c.url or ""} for c in rule.citations],
                "disabled": rule.id in knowledge.policy.disabled_rules,
            }
        )
    return _html(render_template("rules.html", t=knowledge.page_text.raw, rules=rules))

"""Everything one app instance holds: settings, knowledge, store, shared state, auth, metrics, clock.

Built once by `create_app`; request handlers reach it through `current_app.extensions` and hand it the
call's :class:`CallRecord` explicitly. Issued-card, screening-page and audit records go through the
durable outbox (``cds.storage.outbox``): committed to a local file before the response leaves, shipped to
the database by a background thread. Feedback, which the caller must be able to trust, is committed to the
database before the response, or, while the database is down, to the outbox with a sync of its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import sqlalchemy as sa
from flask import Request

from cds.clinical.cards import PRE_SESSION_REVIEW
from cds.clinical.knowledge import Knowledge, ServiceDefinition
from cds.clinical.screening import Screener, ScreenResult
from cds.config import Settings
from cds.errors import ServiceUnavailable
from cds.outbound import address_policy, outbound_session
from cds.storage.guard import Guard
from cds.storage.outbox import Outbox, OutboxFull, PendingFeedback, database_id
from cds.storage.shared_state import ReplayCache, SeenFindings
from cds.storage.store import AuditRecord, FeedbackItem, IssuedCard, ScreenPage, Store, patient_hash
from cds.web.admission import BodyBudget
from cds.web.auth import ClientAuthenticator, VerifiedClient, expected_audience
from cds.web.cors import CorsPolicy
from cds.web.logs import SAFE_EXTRA
from cds.web.metrics import Metrics

if TYPE_CHECKING:  # the redis package is imported only where Redis is configured
    import redis

audit_log = logging.getLogger("cds.audit")
log = logging.getLogger("cds.web.runtime")

UNKNOWN_SERVICE = "unknown"  # the label for any service id we do not host: labels stay a bounded set
_CRITICAL = "critical"


@dataclass(slots=True)
class CallRecord:
    """What one HTTP call carries from the edge to its audit line, passed explicitly (never via flask.g).

    `service` is a service id we host, or ``unknown``: it becomes a metrics label, an audit column and a
    log field, so it must never be what the caller put in the path.
    """

    started: float
    event: str = "service-call"
    service: str = UNKNOWN_SERVICE
    client: VerifiedClient | None = None
    hook_instance: str | None = None
    patient_ref: str | None = None
    rule_ids: list[str] = field(default_factory=list)
    card_uuids: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    feedback_items: int = 0
    issued: list[IssuedCard] = field(default_factory=list)  # written with the audit record, in one commit
    pages: list[ScreenPage] = field(default_factory=list)  # likewise

    def screened(self, result: ScreenResult, cards: list[dict[str, Any]]) -> None:
        self.rule_ids = [f.rule.id for f in result.findings]
        self.card_uuids = [c["uuid"] for c in cards]
        self.patient_ref = result.patient_ref
        self.fetched = list(result.fetched)


def _never() -> bool:
    return False


@dataclass(slots=True)
class Runtime:
    settings: Settings
    knowledge: Knowledge
    store: Store
    seen: SeenFindings
    replay_cache: ReplayCache
    metrics: Metrics
    clock: Callable[[], datetime]
    cors: CorsPolicy
    authenticator: ClientAuthenticator | None
    hash_key: str
    db_guard: Guard
    redis: redis.Redis | None = None
    new_uuid: Callable[[], str] | None = None
    draining: Callable[[], bool] = _never
    _local: threading.local = field(default_factory=threading.local)
    outbox: Outbox = field(init=False)
    body_budget: BodyBudget = field(init=False)

    def __post_init__(self) -> None:
        self.body_budget = BodyBudget(self.settings.max_inflight_body_bytes)
        directory = Path(self.settings.outbox_dir) / database_id(self.store.redacted_url)
        self.outbox = Outbox(
            directory,
            self._ship,
            self.metrics,
            interval_s=self.settings.outbox_interval_s,
            max_backoff_s=self.settings.outbox_max_backoff_s,
        )

    # ------------------------------------------------------------------------------------ screening

    def http(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = outbound_session(address_policy(self.settings))  # no proxies, checked addresses
            self._local.session = session
        return session

    def screener(self, client: VerifiedClient | None = None) -> Screener:
        return Screener(
            self.knowledge,
            self.settings,
            self.http(),
            self.clock,
            self.new_uuid,
            fhir_servers=self.fhir_servers_for(client),
        )

    def fhir_servers_for(self, client: VerifiedClient | None) -> tuple[str, ...] | None:
        """The fhirServer prefixes a call may name: its issuer's `fhir_servers`; any in dev mode."""
        if self.settings.dev_mode:
            return None
        issuer = next((i for i in self.settings.trusted_issuers if client and i.iss == client.iss), None)
        return issuer.fhir_servers if issuer is not None else ()  # no verified issuer: nothing is read

    def service_label(self, service_id: str | None) -> str:
        return service_id if service_id and service_id in self.knowledge.services else UNKNOWN_SERVICE

    def authenticate(self, request: Request) -> VerifiedClient | None:
        if self.authenticator is None:
            return None
        base = self.settings.public_base_url or request.host_url
        return self.authenticator.verify(
            request.headers.get("Authorization"), expected_audience(base, request.path)
        )

    def hash(self, value: str | None) -> str | None:
        return patient_hash(self.hash_key, value) if value else None

    def suppress_repeats(
        self, service: ServiceDefinition, body: Mapping[str, Any], result: ScreenResult
    ) -> list[dict[str, Any]]:
        """A finding shown at order-select is not repeated at order-sign to the same user in the same
        encounter while its evidence is unchanged, unless it is critical and that user has not answered
        its card (accepted or overridden): the pharmacist signing sees what the prescriber did not act on.

        Without an encounter (or a user) nothing is suppressed: the scope would be the patient across
        sessions and users.
        """
        window = self.settings.repeat_suppression_s
        if not window or service.hook not in {"order-select", "order-sign"} or not result.patient_ref:
            return result.cards
        context = body.get("context", {})
        encounter, user = (context.get(name) for name in ("encounterId", "userId"))
        if not isinstance(encounter, str) or not encounter or not isinstance(user, str) or not user:
            return result.cards
        scope = f"{self.hash(result.patient_ref)}|{self.hash(encounter)}|{self.hash(user)}"
        keys = {id(f): (f"select|{scope}|{f.rule.id}", f.fingerprint) for f in result.findings}
        if service.hook == "order-select":
            # each finding with the card that carried it (a consolidated card carries several)
            shown = [(*keys[id(f)], r.card["uuid"]) for r in result.rendered for f in r.findings]
            self.seen.record_shown(shown, window)  # one round trip for all of this call's findings
            return result.cards
        carried = [f for r in result.rendered for f in r.findings]
        found = self.seen.shown_cards([keys[id(f)] for f in carried], window)  # one round trip
        earlier = {id(f): card for f, card in zip(carried, found, strict=True)}
        answered = self._answered(
            [card for f in carried if (card := earlier[id(f)]) and f.indicator == _CRITICAL]
        )
        repeat = {
            id(f): earlier[id(f)] is not None
            and not (f.indicator == _CRITICAL and earlier[id(f)] not in answered)
            for f in carried
        }
        # A card is a repeat when every finding it carries is; the pre-session review when every finding
        # of the response is (a clean chart's review, which carries nothing, is always shown).
        everything = bool(repeat) and all(repeat.values())
        return [
            r.card
            for r in result.rendered
            if not (
                everything
                if r.topic == PRE_SESSION_REVIEW
                else r.findings and all(repeat[id(f)] for f in r.findings)
            )
        ]

    def _answered(self, card_uuids: list[str]) -> set[str]:
        """Cards that received feedback; none when the database cannot tell us (the card is shown)."""
        if not card_uuids:
            return set()
        try:
            answered: set[str] = self.db_guard.call(lambda: self.store.answered_cards(card_uuids))
            return answered
        except (ServiceUnavailable, sa.exc.SQLAlchemyError) as exc:
            self.metrics.count_storage_error("database")
            log.warning("feedback lookup unavailable, showing critical cards: %s", type(exc).__name__)
            return set()

    # ------------------------------------------------------------------------------------ recording

    def record_cards(
        self,
        call: CallRecord,
        service: ServiceDefinition,
        body: Mapping[str, Any],
        result: ScreenResult,
        cards: list[dict[str, Any]],
    ) -> None:
        """The returned cards' records, kept on `call`: `audit` commits them to the outbox with the call's
        audit record (one local commit per call), before the response leaves."""
        shown = {card["uuid"] for card in cards}
        now = datetime.now(UTC)
        context = body.get("context", {})
        encounter = context.get("encounterId") if isinstance(context.get("encounterId"), str) else None
        issued = call.issued
        for rendered in result.rendered:
            card = rendered.card
            if card["uuid"] not in shown:
                continue  # suppressed as a repeat: not returned, so neither counted nor recorded
            for finding in rendered.findings:
                self.metrics.count_cards(finding.rule.id, finding.indicator)
            issued.append(
                IssuedCard(
                    uuid=card["uuid"],
                    service_id=service.id,
                    rule_id=rendered.topic,
                    rule_version=rendered.version,
                    hook_instance=str(body.get("hookInstance")),
                    patient_hash=self.hash(result.patient_ref) or "-",
                    encounter_hash=self.hash(encounter),
                    indicator=card["indicator"],
                    fingerprint=rendered.fingerprint,
                    issued_at=now,
                )
            )
        for key in result.fetched:
            self.metrics.count_fetch(key)

    def keep_screen_page(self, call: CallRecord, page: ScreenPage) -> None:
        """Committed to the local outbox with the call's other records before the cards leave (a database
        round trip the answer does not depend on stays off the request path), shipped to the database
        within `outbox_interval_s`; while the database is down it waits in the outbox like the cards."""
        call.pages.append(page)

    def record_feedback(self, service_id: str, items: list[FeedbackItem]) -> None:
        """Committed to the database, or (database down) to the local outbox with a disk sync; either way
        safe once this returns. Raises ServiceUnavailable (a 503 with Retry-After) when neither can."""
        try:
            self.db_guard.call(lambda: self.store.record_feedback(service_id, items))
            return
        except (ServiceUnavailable, sa.exc.SQLAlchemyError) as exc:
            self.metrics.count_storage_error("database")
            log.warning("feedback kept in the outbox: database unavailable (%s)", type(exc).__name__)
        try:
            self.outbox.append([PendingFeedback(service_id, item) for item in items], sync=True)
        except OutboxFull:
            raise ServiceUnavailable("the feedback could not be stored; send it again later") from None

    def audit(self, call: CallRecord, status: int, seconds: float) -> None:
        client = call.client
        fields = {
            "event": call.event,
            "service": call.service,
            "hookInstance": call.hook_instance,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "cards": len(call.card_uuids),
            "rules": call.rule_ids,
            "fetched": call.fetched,
            "issuer": client.iss if client else None,
            "jti": client.jti if client else None,
            "patient": self.hash(call.patient_ref),
        }
        if call.event == "feedback":
            fields["items"] = call.feedback_items
        audit_log.info("call", extra={SAFE_EXTRA: fields})
        if call.event != "analytics":
            endpoint = f"{call.service}/feedback" if call.event == "feedback" else call.service
            self.metrics.observe_request(endpoint, status, seconds)
        self._queue(
            [
                *call.issued,
                *call.pages,
                AuditRecord(
                    hook_instance=str(call.hook_instance or "-"),
                    service_id=call.service if call.event != "analytics" else "analytics",
                    issuer=client.iss if client else None,
                    jti=client.jti if client else None,
                    patient_hash=self.hash(call.patient_ref),
                    duration_ms=seconds * 1000,
                    outcome=status,
                    rule_ids=tuple(call.rule_ids),
                    card_uuids=tuple(call.card_uuids),
                    at=datetime.now(UTC),
                ),
            ]
        )

    def _queue(self, records: list[IssuedCard | AuditRecord | ScreenPage]) -> None:
        with contextlib.suppress(OutboxFull):  # counted as dropped and logged by the outbox; the call
            self.outbox.append(records)  # itself is still answered

    def _ship(self, kind: str, records: list[Any]) -> None:
        if kind == "card":
            self.store.record_cards(records)
        elif kind == "audit":
            self.store.record_audits(records)
        elif kind == "page":
            self.store.record_screen_pages(records)
        else:
            by_service: dict[str, list[FeedbackItem]] = {}
            for pending in records:
                by_service.setdefault(pending.service_id, []).append(pending.item)
            for service_id, items in by_service.items():
                self.store.record_feedback(service_id, items)

    def flush(self) -> bool:
        """Ship every queued record to the database now (tests, shutdown). True when none is left."""
        return self.outbox.flush()

    # ------------------------------------------------------------------------------------ health

    def readiness(self) -> dict[str, str]:
        """Each part that keeps this instance from taking calls, with why; empty when ready."""
        problems: dict[str, str] = {}
        if self.draining():
            problems["shutdown"] = "draining: stopping after the calls in flight"
        try:
            self.db_guard.call(self.store.ping)
        except (ServiceUnavailable, sa.exc.SQLAlchemyError) as exc:
            problems["database"] = f"unreachable ({type(exc).__name__})"
        if self.redis is not None:
            from redis import RedisError  # noqa: PLC0415  (loaded already: the client came from it)

            try:
                self.redis.ping()
            except RedisError as exc:
                problems["redis"] = f"unreachable ({type(exc).__name__})"
        return problems

"""The worklist: every session of the window, each patient screened once with the hooks' own screener.

Each patient is screened through `cds.clinical.screening.Screener` exactly as an order-select call for a
ketamine or esketamine order planned at the patient's first session of the window (the earliest session is
the most cautious reference: a "within N months before the start" window covers the most records from it).
The screener fetches the chart from the FHIR server with the hooks' time budget and paging limits. A
patient whose chart cannot be fetched or screened is listed as not screened, with the reason: never
dropped, never shown as clear.

Patients are screened concurrently by a bounded pool; each screen starts its own time budget when it
starts, so waiting in the queue costs nothing.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import requests

from cds.clinical import cards
from cds.clinical.engine import Finding
from cds.clinical.knowledge import Knowledge
from cds.clinical.schedule import hold_window, window_ends
from cds.clinical.screening import Screener, ScreenResult
from cds.clinical.situation import Situation
from cds.config import Settings
from cds.errors import CdsError, FhirError
from cds.fhir.client import FhirClient
from cds.fhir.smart_backend import TokenSource
from cds.worklist.sessions import Session, SessionPolicy

log = logging.getLogger(__name__)

HOLD_BEFORE = "hold_hours_before"  # a rule with both parameters defines a timed hold around sessions
HOLD_AFTER = "resume_hours_after"
# ... and a band offers it only when its own text speaks of it: an antiepileptic benzodiazepine's band says
# "do not hold it" and uses none of these
HOLD_PLACEHOLDERS = frozenset(
    {HOLD_BEFORE, HOLD_AFTER, "hold_plan", "hold_short", "last_dose_by", "resume_from"}
)
WINDOW_CONDITION = "onset_within_months"  # the band condition whose window a deferral waits out
DRAFT_ID = "worklist-session"


@dataclass(frozen=True, slots=True)
class Critical:
    summary: str
    eligible_from: date | None  # first planned-start date outside the window, when the window is dated


@dataclass(frozen=True, slots=True)
class Hold:
    medicine: str
    session: datetime
    last_dose_by: datetime  # the full hold
    last_dose_latest: datetime  # the shortest acceptable hold
    resume_from: datetime
    summary: str


@dataclass(frozen=True, slots=True)
class Row:
    patient_id: str | None
    name: str | None
    sessions: tuple[Session, ...]
    screened: bool
    not_screened_reason: str | None = None
    critical: tuple[Critical, ...] = ()
    holds: tuple[Hold, ...] = ()
    instructions: tuple[str, ...] = ()
    review: tuple[str, ...] = ()  # warnings that do not block the session
    unreadable: tuple[str, ...] = ()

    @property
    def first_session(self) -> datetime:
        return self.sessions[0].start

    @property
    def needs_call(self) -> bool:
        return bool(self.critical or self.holds or self.instructions or not self.screened)


@dataclass(frozen=True, slots=True)
class Worklist:
    first_day: date
    days: int
    generated: datetime
    rows: tuple[Row, ...]

    @property
    def session_count(self) -> int:
        return sum(len(row.sessions) for row in self.rows)

    @property
    def critical_count(self) -> int:
        return sum(1 for row in self.rows if row.critical)

    @property
    def calls(self) -> int:
        return sum(1 for row in self.rows if row.needs_call)

    @property
    def not_screened(self) -> int:
        return sum(1 for row in self.rows if not row.screened)

    def summary_line(self) -> str:
        return (
            f"{len(self.rows)} patients, {self.session_count} sessions, {self.critical_count} critical, "
            f"{self.calls} calls to make, {self.not_screened} not screened"
        )


@dataclass
class WorklistBuilder:
    knowledge: Knowledge
    settings: Settings
    session_policy: SessionPolicy
    fhir_base_url: str
    tokens: TokenSource
    http: requests.Session
    clock: Callable[[], datetime]
    concurrency: int = 8
    progress: Callable[[int, int], None] = lambda _done, _total: None
    _done: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def build(self, first_day: date, days: int, sessions: Sequence[Session]) -> Worklist:
        by_patient: dict[str, list[Session]] = {}
        orphans: list[Session] = []
        for session in sessions:
            if session.patient_id is None:
                orphans.append(session)
            else:
                by_patient.setdefault(session.patient_id, []).append(session)
        groups = [sorted(group, key=lambda s: s.start) for group in by_patient.values()]
        total = len(groups)
        self._done = 0
        self.progress(0, total)
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency), thread_name_prefix="worklist") as pool:
            rows = list(pool.map(lambda group: self._tracked(group, total), groups))
        rows += [
            Row(None, None, (s,), False, "the session names no patient the service can read") for s in orphans
        ]
        rows.sort(key=lambda row: (row.first_session, row.name or "", row.patient_id or ""))
        return Worklist(first_day, days, self.clock(), tuple(rows))

    # ------------------------------------------------------------------ one patient

    def _tracked(self, group: Sequence[Session], total: int) -> Row:
        try:
            return self._row(group)
        finally:
            with self._lock:
                self._done += 1
                done = self._done
            self.progress(done, total)

    def _row(self, group: Sequence[Session]) -> Row:
        patient_id = group[0].patient_id
        assert patient_id is not None
        try:
            token = self.tokens.token()
            name = self._name(patient_id, token)
            result = self._screen(group, token)
        except CdsError as exc:
            return Row(patient_id, None, tuple(group), False, _reason(exc))
        except Exception as exc:  # never drop a patient, whatever went wrong
            log.error("worklist: screening one patient failed: %s", type(exc).__name__)  # no message: data
            return Row(patient_id, None, tuple(group), False, f"internal error ({type(exc).__name__})")
        return self._classify(patient_id, name, group, result)

    def _name(self, patient_id: str, token: str) -> str | None:
        client = FhirClient(
            self.fhir_base_url,
            session=self.http,
            access_token=token,
            settings=self.settings,
            deadline=time.monotonic() + self.settings.fhir_time_budget_s,
        )
        patient = client.read(f"Patient/{patient_id}")
        if patient is None:
            raise FhirError("the patient's record was not found on the FHIR server")
        return patient_name(patient)

    def _screen(self, group: Sequence[Session], token: str) -> ScreenResult:
        first = group[0]
        products = frozenset().union(*(s.products for s in group))
        service = next(s for s in self.knowledge.services.values() if s.hook == "order-select")
        drafts = [_draft_order(first, product, self.session_policy) for product in sorted(products)]
        body: dict[str, Any] = {
            "hook": "order-select",
            "hookInstance": "worklist",
            "fhirServer": self.fhir_base_url,
            "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "scope": "system/*.read"},
            "context": {
                "patientId": first.patient_id,
                "selections": [f"MedicationRequest/{draft['id']}" for draft in drafts],
                "draftOrders": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": draft} for draft in drafts],
                },
            },
        }
        screener = Screener(self.knowledge, self.settings, self.http, self.clock)
        return screener.screen(service, body)

    def _classify(
        self, patient_id: str, name: str | None, group: Sequence[Session], result: ScreenResult
    ) -> Row:
        policy = self.knowledge.policy
        critical: list[Critical] = []
        holds: list[Hold] = []
        instructions: list[str] = []
        review: list[str] = []
        unreadable: list[str] = []
        for finding in result.findings:
            summary = self._summary(finding, result.situation)
            rule = finding.rule
            if finding.indicator == "critical":
                critical.append(Critical(summary, _eligible_from(finding, policy.value)))
            elif rule.category == "data-quality":
                unreadable.append(summary)
            elif rule.category == "procedure":
                instructions.append(summary)
            elif finding.indicator == "warning" and not _offers_hold(finding):
                review.append(summary)
            if _offers_hold(finding):
                before = policy.value(rule.id, HOLD_BEFORE)
                after = policy.value(rule.id, HOLD_AFTER)
                for medicine in _held_medicines(finding):
                    for session in group:
                        start = session.start.replace(tzinfo=None)  # local clinic time, as the policy speaks
                        window = hold_window(start, before, after)
                        zone = session.start.tzinfo
                        holds.append(
                            Hold(
                                medicine=medicine,
                                session=session.start,
                                last_dose_by=window.last_dose_by.replace(tzinfo=zone),
                                last_dose_latest=window.last_dose_latest.replace(tzinfo=zone),
                                resume_from=window.resume_from.replace(tzinfo=zone),
                                summary=summary,
                            )
                        )
        return Row(
            patient_id,
            name,
            tuple(group),
            True,
            critical=tuple(critical),
            holds=tuple(holds),
            instructions=tuple(instructions),
            review=tuple(review),
            unreadable=tuple(unreadable),
        )

    def _summary(self, finding: Finding, situation: Situation) -> str:
        """The card's own summary line for the finding, worded by the card layer when it supplies the
        dates a summary states (a hold is then worded per session hour by the worklist's own lines, so its
        summary says the hold in hours, not the card's single date)."""
        values: Mapping[str, str] = finding.values
        card_values = getattr(cards, "card_values", None)
        if card_values is not None:
            if _offers_hold(finding):
                situation = replace(situation, reference_from_order=False)
            values = card_values(
                self.knowledge.card_text, self.knowledge.engine_context(), finding, situation
            )
        return " ".join(finding.band.summary.safe_substitute(values).split())


# ---------------------------------------------------------------------- helpers


def _offers_hold(finding: Finding) -> bool:
    parameters = finding.rule.parameters
    if HOLD_BEFORE not in parameters or HOLD_AFTER not in parameters:
        return False
    band = finding.band
    used = {*band.summary.get_identifiers(), *band.detail.get_identifiers()}
    return bool(used & HOLD_PLACEHOLDERS)


def _held_medicines(finding: Finding) -> list[str]:
    """The medicines a hold applies to: the finding's medication records, not rescue or procedural forms
    (those must stay available)."""
    names: list[str] = []
    for hit in finding.hits:
        if hit.source.resource_type not in {"MedicationRequest", "MedicationStatement"}:
            continue
        if any(note in {"rescue-or-procedural", "duplicate-record"} for note in hit.notes):
            continue
        label = hit.label or hit.source.resource_type
        if label not in names:
            names.append(label)
    return names


def _eligible_from(finding: Finding, value: Callable[[str, str], Any]) -> date | None:
    """The first day the dated event behind a critical finding is outside its window (newest record)."""
    parameter = finding.band.when.get(WINDOW_CONDITION)
    dated = [hit.date for hit in finding.hits if hit.date is not None]
    if not isinstance(parameter, str) or not dated:
        return None
    return window_ends(max(dated), float(value(finding.rule.id, parameter)))


def _draft_order(session: Session, product: str, policy: SessionPolicy) -> dict[str, Any]:
    """The order the screen is run for: the real one when the session points at it (its timing set to this
    session, so windows run from the session), else one written as the site says sessions are screened."""
    moment = session.start.isoformat()
    order = session.order
    if order is not None and order.get("resourceType") == "MedicationRequest" and len(session.products) == 1:
        draft = copy.deepcopy(dict(order))
        draft["id"] = DRAFT_ID + "-" + product
        dosages = [d for d in draft.get("dosageInstruction", []) if isinstance(d, dict)] or [{}]
        for dosage in dosages:
            dosage["timing"] = {"event": [moment]}
        draft["dosageInstruction"] = dosages
        draft.pop("dispenseRequest", None)
        return draft
    return {
        "resourceType": "MedicationRequest",
        "id": DRAFT_ID + "-" + product,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{session.patient_id}"},
        "medicationCodeableConcept": {"text": policy.screen_as[product]},
        "dosageInstruction": [{"timing": {"event": [moment]}}],
    }


def patient_name(patient: Mapping[str, Any]) -> str | None:
    """The official (else first usable) name as "Given Family"."""
    names = [n for n in patient.get("name", []) if isinstance(n, dict)] if isinstance(patient, dict) else []
    names.sort(key=lambda n: 0 if n.get("use") == "official" else 1)
    for name in names:
        text = name.get("text")
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())
        given = [g for g in name.get("given", []) if isinstance(g, str)]
        family = name.get("family")
        family = family if isinstance(family, str) else ""
        full = " ".join([*given, family]).strip()
        if full:
            return " ".join(full.split())
    return None


def _reason(exc: CdsError) -> str:
    """The most specific reason: the FHIR error behind a 412, else the error's own message."""
    cause = exc.__cause__
    if isinstance(cause, CdsError):
        return cause.message
    return exc.message

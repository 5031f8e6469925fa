"""One hook call, end to end, without HTTP: decide the situation, gather data, evaluate, render.

Data is fetched only when the situation needs it: an order for an unrelated medicine needs nothing; an
interacting medicine ordered outside a ketamine order needs the medication list (to see whether a
course is running); a ketamine order or an open chart needs everything the rules read. Required data that
cannot be obtained ends the call with 412 (raised by cds.fhir.prefetch), never with an empty screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import requests

from cds.clinical.cards import CardInputs, CardLinks, RenderedCard, render
from cds.clinical.engine import Finding, evaluate
from cds.clinical.knowledge import Knowledge, ServiceDefinition
from cds.clinical.situation import FULL, INTERACTION, Situation, decide
from cds.config import Settings
from cds.errors import PreconditionFailed
from cds.fhir.client import FhirClient, client_factory_for
from cds.fhir.conformance import annotate, cited_resources
from cds.fhir.facts import build_facts, dates_itself_by_age, draft_order_resources
from cds.fhir.model import PatientFacts
from cds.fhir.prefetch import Gathered, gather

MEDICATION_KEYS = ("medicationStatements", "medicationRequests")
FULL_SCREEN_KEYS = (*MEDICATION_KEYS, "conditions", "allergies", "bloodPressure")
PATIENT_KEY = "patient"  # read only when a record gives its onset as the patient's age


@dataclass(frozen=True, slots=True)
class ScreenResult:
    cards: list[dict[str, Any]]
    findings: list[Finding]
    situation: Situation
    fetched: tuple[str, ...]
    patient_ref: str | None
    rendered: tuple[RenderedCard, ...] = ()  # cards[i] and the findings it carries
    facts: PatientFacts | None = None
    checked: Mapping[str, int] = field(default_factory=dict)  # resource type -> records read


def _needs_patient(gathered: Gathered, service: ServiceDefinition) -> bool:
    """A record dates itself by the patient's age and the Patient (birth date) is not yet gathered."""
    return (
        PATIENT_KEY in service.prefetch
        and PATIENT_KEY not in gathered.resources
        and any(dates_itself_by_age(r) for r in gathered.resources.get("conditions", ()))
    )


def _with_patient(
    gathered: Gathered,
    service: ServiceDefinition,
    body: Mapping[str, Any],
    factory: Callable[[], FhirClient | None],
) -> Gathered:
    """`gathered` plus the Patient, from the prefetch or the FHIR server. If it cannot be had, the records
    dated by age stay undated: their cards ask for the date instead (never a failed screen)."""
    try:
        patient = gather(service.prefetch, body, (PATIENT_KEY,), client_factory=factory)
    except PreconditionFailed:
        return gathered
    return replace(
        gathered,
        resources={**gathered.resources, **patient.resources},
        fetched=gathered.fetched + patient.fetched,
    )


@dataclass(frozen=True, slots=True)
class Screener:
    knowledge: Knowledge
    settings: Settings
    http: requests.Session
    clock: Callable[[], datetime]
    new_uuid: Callable[[], str] | None = None
    fhir_servers: tuple[str, ...] | None = None  # what the caller's issuer may name; None: any (dev, CLI)
    monotonic: Callable[[], float] = time.monotonic  # the FHIR time budget runs on this clock

    def _facts(self, gathered: Gathered, body: Mapping[str, Any], patient_ref: str | None) -> PatientFacts:
        return build_facts(
            patient_ref=patient_ref,
            resources=gathered.resources,
            medications=gathered.medications,
            context=body.get("context", {}),
            bp_spec=self.knowledge.bp_spec,
            relevant=self.knowledge.relevance,
        )

    def screen(
        self, service: ServiceDefinition, body: Mapping[str, Any], links: CardLinks | None = None
    ) -> ScreenResult:
        knowledge = self.knowledge
        budget = min(self.settings.fhir_time_budget_s, self.settings.request_time_budget_s)
        factory = client_factory_for(
            body,
            settings=self.settings,
            session=self.http,
            deadline=self.monotonic() + budget,
            registered=self.fhir_servers,
            monotonic=self.monotonic,
        )
        context = body.get("context", {})
        patient_id = context.get("patientId")
        patient_ref = f"Patient/{patient_id}" if isinstance(patient_id, str) else None
        today = self.clock().date()

        def situation_for(gathered: Gathered, loaded: bool) -> tuple[Situation | None, PatientFacts]:
            # Before the chart is loaded only the draft orders matter: do not normalise the prefetch twice.
            facts = self._facts(gathered if loaded else replace(gathered, resources={}), body, patient_ref)
            found = decide(
                hook=service.hook,
                medications=facts.medications,
                chart_loaded=loaded,
                terminology=knowledge.terminology,
                treatments=knowledge.treatments,
                interaction_valuesets=knowledge.interaction_valuesets,
                statuses=knowledge.statuses,
                policy=knowledge.policy,
                today=today,
            )
            return found, facts

        # Draft orders first: they alone often settle that there is nothing to say.
        gathered = gather(service.prefetch, body, (), client_factory=factory)
        situation, facts = situation_for(gathered, loaded=False)
        fetched: tuple[str, ...] = gathered.fetched
        if situation is None or situation.mode == FULL:
            keys = (
                FULL_SCREEN_KEYS
                if situation is not None or service.hook == "patient-view"
                else MEDICATION_KEYS
            )
            gathered = gather(service.prefetch, body, keys, client_factory=factory)
            fetched = gathered.fetched
            situation, facts = situation_for(gathered, loaded=True)
            if situation is not None and situation.mode == FULL and keys != FULL_SCREEN_KEYS:
                gathered = gather(service.prefetch, body, FULL_SCREEN_KEYS, client_factory=factory)
                fetched = gathered.fetched
                situation, facts = situation_for(gathered, loaded=True)
            if situation is not None and situation.mode == FULL and _needs_patient(gathered, service):
                gathered = _with_patient(gathered, service, body, factory)
                fetched = gathered.fetched
                situation, facts = situation_for(gathered, loaded=True)
        assert situation is not None  # with the chart loaded, decide() always decides
        findings = (
            evaluate(knowledge.engine_context(), knowledge.rules, facts, situation)
            if situation.mode in {FULL, INTERACTION}
            else []
        )
        drafts = draft_order_resources(context) if isinstance(context, dict) else []
        if findings:
            resources = cited_resources(findings, [*gathered.resources.values(), drafts])
            findings = annotate(findings, resources, self.settings.max_json_depth)
        extra = {"new_uuid": self.new_uuid} if self.new_uuid else {}
        inputs = CardInputs(
            situation=situation,
            facts=facts,
            draft_orders=[d for d in drafts if isinstance(d, dict)],
            resources=_ByReference(tuple(gathered.resources.values())),
            links=links or CardLinks(),
        )
        rendered = render(
            findings,
            inputs,
            ctx=knowledge.engine_context(),
            text=knowledge.card_text,
            override_catalogue=knowledge.override_reasons,
            order_sign_instructions=knowledge.policy.order_sign_instructions,
            **extra,
        )
        checked: dict[str, int] = {}
        for group in gathered.resources.values():
            for resource in group:
                kind = str(resource.get("resourceType"))
                checked[kind] = checked.get(kind, 0) + 1
        return ScreenResult(
            [r.card for r in rendered],
            findings,
            situation,
            fetched,
            patient_ref,
            tuple(rendered),
            facts,
            checked,
        )


class _ByReference(Mapping[str, Mapping[str, Any]]):
    """ "Type/id" -> resource over the fetched resources (a suggestion may address a record's author),
    indexed on first use: most calls never look a record up."""

    def __init__(self, groups: Iterable[tuple[dict[str, Any], ...]]) -> None:
        self._groups = groups
        self._index: dict[str, Mapping[str, Any]] | None = None

    def _built(self) -> dict[str, Mapping[str, Any]]:
        if self._index is None:
            self._index = {
                f"{resource.get('resourceType')}/{resource['id']}": resource
                for group in self._groups
                for resource in group
                if isinstance(resource.get("id"), str)
            }
        return self._index

    def __getitem__(self, reference: str) -> Mapping[str, Any]:
        return self._built()[reference]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())

"""Finding the ketamine and esketamine sessions of a window on the site's FHIR server.

What marks a session is site policy in data (rules/_sessions.yaml); the treatments are recognised by the
same value sets and terminology as orders in the hooks, so "Spravato" in an appointment's description, a
local code listed by the site, or an order the appointment is based on all count. Anything else is left
out. A MedicationRequest counts when its dosage timing puts a dose in the window.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml
from jsonschema import Draft202012Validator

from cds.clinical.knowledge import Knowledge
from cds.clinical.situation import treatment_of
from cds.errors import ConfigError
from cds.fhir.client import FhirClient
from cds.fhir.facts import concept, medication_fact, parse_datetime
from cds.fhir.model import Concept
from cds.fhir.prefetch import medication_key
from cds.loading import load_yaml

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})$")
_ORDER_REF = re.compile(r"(?:^|/)((?:MedicationRequest|ServiceRequest)/[A-Za-z0-9\-.]{1,64})$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PERIOD_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "wk": timedelta(weeks=1)}


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    appointment_statuses: tuple[str, ...]
    codes: Mapping[tuple[str, str], str]  # (system, code) -> product
    screen_as: Mapping[str, str]  # product -> the text a session is screened as
    usual_session_time: time  # site policy's session_time: a day without a time starts then


def load_session_policy(knowledge: Knowledge, path: Path | None = None) -> SessionPolicy:
    """rules/_sessions.yaml, or the site's own copy; validated against its schema, products checked."""
    source = path or knowledge.root / "rules" / "_sessions.yaml"
    try:
        data = load_yaml(source.read_text(encoding="utf-8"))
        schema = json.loads(
            (knowledge.root / "fhir_profiles" / "schemas" / "sessions.schema.json").read_text(
                encoding="utf-8"
            )
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the session markers {source.name}: {exc}") from exc
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise ConfigError(f"{source.name}: {where}: {errors[0].message}")
    products = set(knowledge.treatments)
    named = {entry["product"] for entry in data["codes"]} | set(data["screen_as"])
    unknown = sorted(named - products)
    if unknown:
        raise ConfigError(
            f"{source.name}: unknown treatment(s) {', '.join(unknown)}; known: {sorted(products)}"
        )
    missing = sorted(products - set(data["screen_as"]))
    if missing:
        raise ConfigError(f"{source.name}: screen_as lacks {', '.join(missing)}")
    return SessionPolicy(
        appointment_statuses=tuple(data["appointment_statuses"]),
        codes={(e["system"], e["code"]): e["product"] for e in data["codes"]},
        screen_as={product: spec["text"] for product, spec in data["screen_as"].items()},
        usual_session_time=knowledge.policy.session_time,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) in the clinic's time zone."""

    first_day: date
    days: int
    zone: tzinfo

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first_day, time(0, 0), tzinfo=self.zone)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.first_day + timedelta(days=self.days), time(0, 0), tzinfo=self.zone)

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, datetime) and self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class Session:
    patient_id: str | None  # None: the session names no patient we can read (listed, never dropped)
    start: datetime  # aware, in the clinic's time zone
    products: frozenset[str]
    source: str  # "Appointment/1" or "MedicationRequest/2"
    order: Mapping[str, Any] | None = None  # the ketamine/esketamine order itself, when known


@dataclass
class Discovery:
    knowledge: Knowledge
    policy: SessionPolicy
    client: FhirClient
    window: Window
    _orders: dict[str, Mapping[str, Any] | None] = field(default_factory=dict)
    _medications: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ public

    def sessions(self) -> list[Session]:
        found = [*self._appointment_sessions(), *self._order_sessions()]
        return _merge(found)

    # ------------------------------------------------------------------ appointments

    def _appointment_sessions(self) -> list[Session]:
        statuses = ",".join(self.policy.appointment_statuses)
        # a day either side: servers differ on how they compare a date-time with a zone; the exact test
        # against the window is ours
        low = (self.window.first_day - timedelta(days=1)).isoformat()
        high = (self.window.first_day + timedelta(days=self.window.days + 1)).isoformat()
        appointments = self.client.search(f"Appointment?date=ge{low}&date=le{high}&status={statuses}")
        sessions: list[Session] = []
        for appointment in appointments:
            start = _moment(appointment.get("start"), self.window.zone, self.policy.usual_session_time)
            if start is None or start not in self.window:
                continue
            if appointment.get("status") not in self.policy.appointment_statuses:
                continue
            products, order = self._appointment_products(appointment)
            if not products:
                continue
            patients: list[str | None] = [*self._participant_patients(appointment)] or [None]
            for patient in patients:
                sessions.append(
                    Session(
                        patient_id=patient,
                        start=start,
                        products=products,
                        source=f"Appointment/{appointment.get('id')}",
                        order=order,
                    )
                )
        return sessions

    def _appointment_products(
        self, appointment: Mapping[str, Any]
    ) -> tuple[frozenset[str], Mapping[str, Any] | None]:
        concepts = [concept(v) for v in _list(appointment.get("serviceType"))]
        concepts += [concept(appointment.get("appointmentType"))]
        concepts += [concept(v) for v in _list(appointment.get("reasonCode"))]
        description = appointment.get("description")
        if isinstance(description, str) and description.strip():
            concepts.append(Concept(text=description))
        products = set(self._products(concepts))
        order: Mapping[str, Any] | None = None
        for item in _list(appointment.get("basedOn")):
            reference = item.get("reference") if isinstance(item, dict) else None
            match = _ORDER_REF.search(reference) if isinstance(reference, str) else None
            if match is None:
                continue
            resource = self._read_order(match.group(1))
            if resource is None:
                continue
            from_order = self._order_products(resource)
            if from_order and resource.get("resourceType") == "MedicationRequest":
                order = order or resource
            products |= from_order
        return frozenset(products), order

    def _products(self, concepts: Iterable[Concept]) -> Iterable[str]:
        treatments = self.knowledge.treatments
        for item in concepts:
            for coding in item.codings:
                product = self.policy.codes.get((coding.system or "", coding.code or ""))
                if product:
                    yield product
            if item.codings or item.text:
                product = _treatment(item, self.knowledge, treatments)
                if product:
                    yield product

    def _read_order(self, reference: str) -> Mapping[str, Any] | None:
        if reference not in self._orders:
            self._orders[reference] = self.client.read(reference)
        return self._orders[reference]

    def _order_products(self, resource: Mapping[str, Any]) -> frozenset[str]:
        if resource.get("resourceType") == "ServiceRequest":
            return frozenset(self._products([concept(resource.get("code"))]))
        product = self._medication_product(resource)
        return frozenset({product}) if product else frozenset()

    def _medication_product(self, resource: Mapping[str, Any]) -> str | None:
        reference = resource.get("medicationReference")
        key = medication_key(reference.get("reference", "")) if isinstance(reference, dict) else None
        if key is not None and key not in self._medications:
            found = self.client.read(key)
            if found is not None:
                self._medications[key] = found
        fact = medication_fact(resource, self._medications)
        return treatment_of(fact, self.knowledge.terminology, self.knowledge.treatments)

    # ------------------------------------------------------------------ orders with a timing

    def _order_sessions(self) -> list[Session]:
        statuses = ",".join(sorted(self.knowledge.statuses.request_counts))
        low = (self.window.first_day - timedelta(days=1)).isoformat()
        high = (self.window.first_day + timedelta(days=self.window.days + 1)).isoformat()
        queries = [
            # a dose on a given day: any medication, recognised here (plain text and local codes too)
            f"MedicationRequest?date=ge{low}&date=le{high}&status={statuses}"
            "&_include=MedicationRequest:medication",
        ]
        codes = self._order_codes()
        if codes:
            # a course with a boundsPeriod: FHIR cannot search on it, so every running order of a
            # treatment code is read and its timing tested here
            queries.append(
                f"MedicationRequest?code={quote(codes, safe=',|:/')}&status={statuses}"
                "&_include=MedicationRequest:medication"
            )
            queries.append(
                f"MedicationRequest?medication.code={quote(codes, safe=',|:/')}&status={statuses}"
                "&_include=MedicationRequest:medication"
            )
        seen: set[str] = set()
        sessions: list[Session] = []
        for query in queries:
            resources = self.client.search(query)
            for resource in resources:
                if resource.get("resourceType") == "Medication" and isinstance(resource.get("id"), str):
                    self._medications[f"Medication/{resource['id']}"] = resource
            for resource in resources:
                rid = resource.get("id")
                if resource.get("resourceType") != "MedicationRequest" or not isinstance(rid, str):
                    continue
                if rid in seen:
                    continue
                seen.add(rid)
                if (resource.get("status") or "") not in self.knowledge.statuses.request_counts:
                    continue
                intent = resource.get("intent")
                if intent and intent not in self.knowledge.statuses.request_intents:
                    continue
                product = self._medication_product(resource)
                if product is None:
                    continue
                subject = resource.get("subject")
                patient = self._patient_id(subject.get("reference") if isinstance(subject, dict) else None)
                for start in dose_times(resource, self.window, self.policy.usual_session_time):
                    sessions.append(
                        Session(
                            patient_id=patient,
                            start=start,
                            products=frozenset({product}),
                            source=f"MedicationRequest/{rid}",
                            order=resource,
                        )
                    )
        return sessions

    def _patient_id(self, reference: Any) -> str | None:
        """The id of a Patient reference on this server; None for one elsewhere (the same id on another
        server may be someone else) or anything unreadable."""
        if not isinstance(reference, str):
            return None
        match = _PATIENT_REF.search(reference)
        if match is None or (urlsplit(reference).scheme and not self.client.is_under_base(reference)):
            return None
        if not urlsplit(reference).scheme and reference != f"Patient/{match.group(1)}":
            return None
        return match.group(1)

    def _participant_patients(self, appointment: Mapping[str, Any]) -> list[str]:
        patients: list[str] = []
        for participant in _list(appointment.get("participant")):
            actor = participant.get("actor") if isinstance(participant, dict) else None
            patient = self._patient_id(actor.get("reference") if isinstance(actor, dict) else None)
            if patient and patient not in patients:
                patients.append(patient)
        return patients

    def _order_codes(self) -> str:
        """system|code for every member of the treatment value sets (expansions shipped in data)."""
        wanted = set(self.knowledge.treatments.values())
        tokens: list[str] = []
        for path in sorted((self.knowledge.root / "fhir_profiles" / "valuesets").glob("*.json")):
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("url") not in wanted:
                continue
            for entry in document.get("expansion", {}).get("contains", []):
                tokens.append(f"{entry['system']}|{entry['code']}")
        return ",".join(sorted(set(tokens)))


# ---------------------------------------------------------------------- timing


def dose_times(resource: Mapping[str, Any], window: Window, usual: time) -> list[datetime]:
    """Dose times of a MedicationRequest that fall in the window: every timing.event, and the start of a
    timing.repeat.boundsPeriod with its repeats (every `period` `periodUnit`) when it names one."""
    found: set[datetime] = set()
    for dosage in _list(resource.get("dosageInstruction")):
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        if not isinstance(timing, dict):
            continue
        for event in _list_any(timing.get("event")):
            moment = _moment(event, window.zone, usual)
            if moment is not None and moment in window:
                found.add(moment)
        repeat = timing.get("repeat")
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
        if not isinstance(bounds, dict):
            continue
        first = _moment(bounds.get("start"), window.zone, usual)
        if first is None:
            continue
        last = _moment(bounds.get("end"), window.zone, time(23, 59))
        step = _step(repeat) if isinstance(repeat, dict) else None
        moment = first
        while moment < window.end and (last is None or moment <= last):
            if moment in window:
                found.add(moment)
            if step is None:
                break
            moment += step
    return sorted(found)


def _step(repeat: Mapping[str, Any]) -> timedelta | None:
    period = repeat.get("period")
    unit = _PERIOD_UNITS.get(str(repeat.get("periodUnit")))
    if not isinstance(period, int | float) or isinstance(period, bool) or period <= 0 or unit is None:
        return None
    frequency = repeat.get("frequency")
    if isinstance(frequency, int) and not isinstance(frequency, bool) and frequency > 1:
        return None  # several doses per period at unstated times: only the first is certain
    return unit * period


def _moment(value: Any, zone: tzinfo, usual: time) -> datetime | None:
    """A FHIR date or dateTime as an aware date-time in `zone`; a bare day starts at the usual time."""
    if not isinstance(value, str):
        return None
    if _DAY.match(value):
        try:
            return datetime.combine(date.fromisoformat(value), usual, tzinfo=zone)
        except ValueError:
            return None
    parsed = parse_datetime(value)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=zone)
    return parsed.astimezone(zone)


# ---------------------------------------------------------------------- helpers


def _merge(sessions: Sequence[Session]) -> list[Session]:
    """One session per patient and start; an order's dose on a day the patient has an appointment is
    that appointment (the appointment carries the real time)."""
    appointment_days = {
        (s.patient_id, s.start.date()) for s in sessions if s.source.startswith("Appointment/")
    }
    kept: dict[tuple[str | None, datetime, str], Session] = {}
    for session in sessions:
        if session.source.startswith("MedicationRequest/") and (
            (session.patient_id, session.start.date()) in appointment_days
        ):
            continue
        key = (session.patient_id, session.start, session.source if session.patient_id is None else "")
        if key in kept:
            previous = kept[key]
            kept[key] = Session(
                previous.patient_id,
                previous.start,
                previous.products | session.products,
                previous.source,
                previous.order or session.order,
            )
        else:
            kept[key] = session
    return sorted(kept.values(), key=lambda s: (s.start, s.patient_id or "", s.source))


def _treatment(item: Concept, knowledge: Knowledge, treatments: Mapping[str, str]) -> str | None:
    for product, url in treatments.items():
        if knowledge.terminology.match(url, item) is not None:
            return product
    return None


def _list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return [value] if isinstance(value, dict) else []


def _list_any(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []

"""Load and cross-check every knowledge artifact once, at start-up.

Services (hooks/), rules and site policy (rules/), value sets, code systems, tables and schemas
(fhir_profiles/). Anything malformed or dangling (a rule naming a value set that does not exist, a
placeholder no band can fill, an override reason nobody defined) raises ConfigError before the service
answers a single request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from cds.clinical.cards import CardText, OverrideReason
from cds.clinical.dosing import DosingVocabulary
from cds.clinical.engine import EngineContext
from cds.clinical.policy import SitePolicy, load_policy
from cds.clinical.rules import Rule, load_rules
from cds.clinical.screen_record import PageText
from cds.clinical.statuses import StatusSemantics
from cds.clinical.terminology import Terminology
from cds.errors import ConfigError
from cds.fhir.facts import BloodPressureSpec, RelevanceFilter
from cds.loading import load_yaml, schema_validator
from cds.paths import knowledge_root

# Values each fact kind can put into a band's text, besides the rule's own parameters.
# Values every card can quote (cds.clinical.cards.card_values adds the dates), then those by fact kind.
_COMMON = frozenset({"product", "reference_date", "start", "counted_from", "stale_after_days"})
_DATED = frozenset({"onset", "months_ago", "months_ago_today", "eligible_from"})
_HOLD = frozenset(
    {"hold_plan", "hold_short", "last_dose_by", "resume_from", "session", "hold_hours", "resume_hours"}
)
PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    "condition": _COMMON | _DATED | {"condition"},
    "allergy": _COMMON | _DATED | {"substance", "reaction"},
    "medication": _COMMON
    | _DATED
    | _HOLD
    | {
        "medication",
        "total",
        "basis_unit",
        "evidence_total",
        "evidence_unit",
        "indication",
        "long_acting",
        "half_life_hours",
    },
    "blood-pressure": _COMMON | {"systolic", "diastolic", "reading_date"},
    "order": _COMMON,
    "unreadable": _COMMON | {"count", "categories"},
}


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    id: str
    hook: str
    prefetch: Mapping[str, str]
    document: Mapping[str, Any]  # served verbatim by discovery


@dataclass(frozen=True, slots=True)
class Knowledge:
    root: Path
    services: Mapping[str, ServiceDefinition]
    rules: tuple[Rule, ...]
    policy: SitePolicy
    terminology: Terminology
    dosing: DosingVocabulary
    statuses: StatusSemantics
    card_text: CardText
    page_text: PageText
    override_reasons: Mapping[str, OverrideReason]
    treatments: Mapping[str, str]  # product -> value set URL
    interaction_valuesets: tuple[str, ...]
    request_validator: Draft202012Validator
    feedback_validator: Draft202012Validator
    response_validator: Draft202012Validator
    bp_spec: BloodPressureSpec
    relevance: RelevanceFilter  # which chart records any rule (or treatment detection) could match
    bp_unit: str

    def override_display(self, system: object, code: object) -> str | None:
        """The display of an override reason we offer (our CodeSystem or the HL7 non-adherence codes)."""
        reason = self.override_reasons.get(code) if isinstance(code, str) else None
        return reason.display if reason is not None and reason.system == system else None

    def override_displays(self) -> dict[tuple[str, str], str]:
        return _displays(self.override_reasons)

    def engine_context(self) -> EngineContext:
        return EngineContext(
            terminology=self.terminology,
            dosing=self.dosing,
            statuses=self.statuses,
            policy=self.policy,
            product_names=self.card_text.raw["products"],
            dose_units=self.card_text.raw["dose_units"],
            bp_unit=self.bp_unit,
            treatment_valuesets=self.treatments,
            date_values=self.card_text.raw.get("date_values", {}),
        )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path.name}: {exc}") from exc


def _validator(path: Path) -> Draft202012Validator:
    try:
        return schema_validator(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path.name}: {exc}") from exc


def _services(root: Path) -> dict[str, ServiceDefinition]:
    validator = _validator(root / "fhir_profiles" / "schemas" / "service-definition.schema.json")
    services: dict[str, ServiceDefinition] = {}
    for path in sorted((root / "hooks").glob("*.json")):
        document = _json(path)
        errors = list(validator.iter_errors(document))
        if errors:
            raise ConfigError(f"hooks/{path.name}: {errors[0].message}")
        if document["id"] in services:
            raise ConfigError(f"hooks/{path.name}: duplicate service id {document['id']}")
        services[document["id"]] = ServiceDefinition(
            id=document["id"], hook=document["hook"], prefetch=document.get("prefetch", {}), document=document
        )
    if not services:
        raise ConfigError("no service definitions in hooks/")
    return services


def override_displays(root: Path | None = None) -> dict[tuple[str, str], str]:
    """(system, code) -> display for every override reason the service offers; for reports of feedback
    that arrived with a code only (clients often send code and system without a display)."""
    return _displays(_override_reasons(root or knowledge_root()))


def _displays(reasons: Mapping[str, OverrideReason]) -> dict[tuple[str, str], str]:
    return {(reason.system, reason.code): reason.display for reason in reasons.values()}


def _override_reasons(root: Path) -> dict[str, OverrideReason]:
    reasons: dict[str, OverrideReason] = {}
    for path in sorted((root / "fhir_profiles" / "codesystems").glob("*.json")):
        system = _json(path)
        for concept in system.get("concept", []):
            if concept["code"] in reasons:
                raise ConfigError(f"override reason {concept['code']} defined twice")
            reasons[concept["code"]] = OverrideReason(system["url"], concept["code"], concept["display"])
    return reasons


def _statuses(path: Path) -> StatusSemantics:
    data = _json(path)
    try:
        return StatusSemantics(
            statement_counts=frozenset(data["medication_statement_counts"]),
            request_counts=frozenset(data["medication_request_counts"]),
            request_intents=frozenset(data["medication_request_intents"]),
            condition_active=frozenset(data["condition_active"]),
            verification_excluded=frozenset(data["verification_excluded"]),
            allergy_active=frozenset(data["allergy_active"]),
        )
    except KeyError as exc:
        raise ConfigError(f"{path.name} lacks {exc}") from exc


def load_knowledge(policy_file: str | None = None, root: Path | None = None) -> Knowledge:
    root = root or knowledge_root()
    profiles = root / "fhir_profiles"
    terminology = Terminology.load(profiles)
    dosing = DosingVocabulary.load(profiles / "tables" / "dosing-vocabulary.json")
    override_reasons = _override_reasons(root)
    card_text = CardText(load_yaml((root / "rules" / "card-text.yaml").read_text(encoding="utf-8")))
    for category, codes in card_text.raw["default_override_reasons"].items():
        for code in codes:
            if code not in override_reasons:
                raise ConfigError(
                    f"card-text.yaml: default override reason {code!r} ({category}) is undefined"
                )
    treatments_doc = load_yaml((root / "rules" / "_treatments.yaml").read_text(encoding="utf-8"))
    treatments = {product: spec["valueset"] for product, spec in treatments_doc.items()}
    rules = load_rules(
        root / "rules",
        profiles / "schemas" / "rule.schema.json",
        placeholders=PLACEHOLDERS,
        valueset_known=terminology.known,
        override_reason_known=override_reasons.__contains__,
        products=tuple(treatments),
    )
    policy = load_policy(
        root / "rules" / "site-policy.yaml",
        Path(policy_file) if policy_file else None,
        profiles / "schemas" / "site-policy.schema.json",
        rules,
    )
    for url in treatments.values():
        if not terminology.known(url):
            raise ConfigError(f"rules/_treatments.yaml names unknown value set {url}")
    interaction_valuesets = tuple(
        sorted(
            {
                url
                for rule in rules
                if rule.category == "interaction"
                for url in ([*rule.dose.match] if rule.dose else [])
                + [u for b in rule.bands for u in b.match]
            }
        )
    )
    bp = terminology.blood_pressure_codes()
    plausible = _json(profiles / "tables" / "plausibility.json")["blood_pressure_mmHg"]
    bp_spec = BloodPressureSpec(
        panel={(c.system or "", c.code or "") for c in bp.panel},
        systolic={(c.system or "", c.code or "") for c in bp.systolic},
        diastolic={(c.system or "", c.code or "") for c in bp.diastolic},
        above=float(plausible["above"]),
        below=float(plausible["below"]),
        pair_within=timedelta(minutes=float(plausible["pair_within_minutes"])),
    )
    schemas = profiles / "schemas"
    return Knowledge(
        root=root,
        services=_services(root),
        rules=rules,
        policy=policy,
        terminology=terminology,
        dosing=dosing,
        statuses=_statuses(profiles / "tables" / "status-semantics.json"),
        card_text=card_text,
        page_text=PageText(load_yaml((root / "rules" / "page-text.yaml").read_text(encoding="utf-8"))),
        override_reasons=override_reasons,
        treatments=treatments,
        interaction_valuesets=interaction_valuesets,
        request_validator=_validator(schemas / "hook-request.schema.json"),
        feedback_validator=_validator(schemas / "feedback.schema.json"),
        response_validator=_validator(schemas / "hook-response.schema.json"),
        bp_spec=bp_spec,
        relevance=RelevanceFilter(
            terminology.memberships,
            frozenset(url for rule in rules for url in rule.valuesets()) | frozenset(treatments.values()),
            terminology.needs_review,
        ),
        bp_unit=str(plausible["unit"]),
    )

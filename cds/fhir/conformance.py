"""FHIR R4 conformance of the records a card rests on, checked with fhir.resources' R4B models.

Full model validation costs about a quarter of a millisecond per resource: too slow for every resource of
a large chart on the request path (see bench/results), so it runs only where it earns its cost: on the
resources behind each finding and on the ketamine orders a suggestion would delete. A record that does
not conform never silences a finding (the screen reads it tolerantly); the card says where it deviates
so the source system can be corrected.

R4B and R4 share these five resources' structure, which is why the R4B models serve for R4 data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from cds.clinical.engine import Finding, Hit
from cds.fhir.model import SourceRef
from cds.web.limits import depth_exceeds

MODELS: Mapping[str, Any] = {
    "AllergyIntolerance": AllergyIntolerance,
    "Condition": Condition,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "Observation": Observation,
}
NOTE_PREFIX = "nonconformant:"


def _tolerated(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Undo the deviations real clients are known to send (docs/cds-hooks-conformance.md) before judging."""
    fixed = dict(resource)
    if isinstance(fixed.get("category"), dict):
        fixed["category"] = [fixed["category"]]
    return fixed


_VERDICT_CACHE_SIZE = 20_000
_verdicts: dict[bytes, str | None] = {}


def conformance_problem(resource: Mapping[str, Any], max_depth: int = 64) -> str | None:
    """The JSON path of the first deviation from the R4 model, or None when the resource conforms.

    Verdicts are cached by a digest of the resource's canonical JSON: the same chart is screened again
    at order-select, order-sign and every time it is opened, and hashing costs a tenth of validating.
    """
    model = MODELS.get(str(resource.get("resourceType")))
    if model is None:
        return None
    if depth_exceeds(resource, max_depth):
        return "(nested too deep to validate)"
    try:
        key = hashlib.blake2b(
            json.dumps(resource, sort_keys=True, default=str).encode(), digest_size=20
        ).digest()
    except (TypeError, ValueError):
        return _validate(model, resource)
    if key not in _verdicts:
        if len(_verdicts) >= _VERDICT_CACHE_SIZE:
            _verdicts.clear()
        _verdicts[key] = _validate(model, resource)
    return _verdicts[key]


def _validate(model: Any, resource: Mapping[str, Any]) -> str | None:
    try:
        model.model_validate(_tolerated(resource))
    except ValidationError as exc:
        errors = exc.errors()
        location = ".".join(str(part) for part in errors[0].get("loc", ())) if errors else ""
        return location or "(resource)"
    except (ValueError, TypeError):
        return "(resource)"
    return None


def cited_resources(
    findings: Iterable[Finding], groups: Iterable[Iterable[Any]]
) -> dict[SourceRef, Mapping[str, Any]]:
    """The raw resources behind the findings' evidence rows (one pass, keeping only those)."""
    wanted = {hit.source for f in findings for hit in (*f.hits, *f.other_hits)}
    ids = {ref.id for ref in wanted}
    index: dict[SourceRef, Mapping[str, Any]] = {}
    for group in groups:
        for resource in group:
            if not isinstance(resource, dict):
                continue
            rid = resource.get("id")
            # An id that is a list or an object is bad input, not a key: such a record cannot be cited.
            if isinstance(rid, (str, int)) and str(rid) in ids:
                ref = SourceRef(str(resource.get("resourceType")), str(rid))
                if ref in wanted:
                    index[ref] = resource
    return index


def annotate(
    findings: list[Finding], resources: Mapping[SourceRef, Mapping[str, Any]], max_depth: int = 64
) -> list[Finding]:
    """Add a `nonconformant:<path>` note to every evidence row whose record deviates from R4."""
    verdicts: dict[SourceRef, str | None] = {}

    def check(hit: Hit) -> Hit:
        if hit.source not in resources:
            return hit
        if hit.source not in verdicts:
            verdicts[hit.source] = conformance_problem(resources[hit.source], max_depth)
        problem = verdicts[hit.source]
        return replace(hit, notes=(*hit.notes, NOTE_PREFIX + problem)) if problem else hit

    return [
        replace(
            finding,
            hits=tuple(check(hit) for hit in finding.hits),
            other_hits=tuple(check(hit) for hit in finding.other_hits),
        )
        for finding in findings
    ]

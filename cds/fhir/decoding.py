"""Request bodies decoded once, keeping of each prefetched record only the elements screening reads.

A large chart is mostly bytes the screen never looks at (`meta`, narrative, identifiers, the patient's
name). msgspec decodes each prefetched resource into a plain dict holding only `SCREENED_ELEMENTS`,
skipping the rest without building it, and keeps the resource's exact bytes (`msgspec.Raw`, a view into
the body, no copy) so that a record a card cites can still be validated against the FHIR model as sent.

Anything that does not have the expected shape (a prefetch value that is not an object, a Bundle whose
`entry` is not a list, an entry that is not a resource) is decoded as it is, in full, so the rest of the
service judges it exactly as before: pruning never turns malformed data into "nothing found".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

import msgspec

# Top-level elements of MedicationStatement, MedicationRequest, Condition, AllergyIntolerance,
# Observation, Patient and Medication that the screen reads. tests/test_decoding.py fails when code under
# cds/ names an element of those resources that is not listed here (or in NOT_SCREENED with its reason).
SCREENED_ELEMENTS: frozenset[str] = frozenset(
    {
        "resourceType",
        "id",
        "status",
        "intent",
        "priority",
        "category",
        "code",
        "clinicalStatus",
        "verificationStatus",
        "severity",
        "criticality",
        "type",
        "reaction",
        "medicationCodeableConcept",
        "medicationReference",
        "contained",
        "ingredient",
        "form",
        "amount",
        "onsetDateTime",
        "onsetAge",
        "onsetPeriod",
        "onsetRange",
        "onsetString",
        "abatementDateTime",
        "recordedDate",
        "effectiveDateTime",
        "effectivePeriod",
        "issued",
        "dateAsserted",
        "authoredOn",
        "dosage",
        "dosageInstruction",
        "dispenseRequest",
        "component",
        "valueQuantity",
        "valueString",
        "derivedFrom",
        "basedOn",
        "reasonCode",
        "requester",
        "subject",
        "patient",
        "context",
        "evidence",
        "note",
        "active",
        "birthDate",
    }
)

# Elements the code names for something else, never read from a chart record (kept out on purpose).
NOT_SCREENED: Mapping[str, str] = {
    "meta": "version and profile bookkeeping; the largest element of a typical record",
    "text": "the narrative; coded elements and their own text are read instead",
    "extension": "read only from value-set files, never from chart records",
    "name": "the patient's name is never read (it must not reach a log or a page)",
    "link": "Bundle links are read at Bundle level; Patient.link is not used",
}

_Resource = TypedDict("_Resource", dict.fromkeys(SCREENED_ELEMENTS, Any), total=False)  # type: ignore[misc]


class _Entry(TypedDict, total=False):
    resource: msgspec.Raw
    search: Any
    fullUrl: Any


# A prefetch value: a searchset Bundle (entries kept as raw bytes) or a single resource (a read).
_Value = TypedDict(
    "_Value",
    {**dict.fromkeys(SCREENED_ELEMENTS, Any), "entry": list[_Entry], "link": Any, "total": Any},  # type: ignore[misc]
    total=False,
)

_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()
_VALUE = msgspec.json.Decoder(_Value)
_RESOURCE = msgspec.json.Decoder(_Resource)


class HookBody(dict[str, Any]):
    """A decoded request: a plain dict, plus the exact bytes of each pruned prefetched resource."""

    __slots__ = ("sources",)

    def __init__(self, items: Mapping[str, Any], sources: dict[int, msgspec.Raw]) -> None:
        super().__init__(items)
        self.sources = sources


def decode_body(raw: bytes) -> Any:
    """JSON text to Python values; a hook request's prefetch is pruned (see module docstring).

    What msgspec refuses goes to the standard library's parser, whole: it also takes the bare NaN and
    Infinity tokens and lone surrogates that sloppy senders write (their records are then judged
    unreadable one by one, not the whole request refused). Raises ValueError (json.JSONDecodeError) for
    malformed JSON and RecursionError for pathological nesting.
    """
    try:
        return _decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def decode_json(raw: bytes | msgspec.Raw) -> Any:
    """Any JSON document, whole: msgspec, or the standard library's parser for what msgspec refuses."""
    try:
        return _ANY.decode(raw)
    except msgspec.DecodeError:
        return json.loads(bytes(raw))


def _decode(raw: bytes) -> Any:
    if raw.lstrip()[:1] != b"{":
        return _ANY.decode(raw)  # not an object: the caller refuses it with its own message
    top = _TOP.decode(raw)
    sources: dict[int, msgspec.Raw] = {}
    items = {key: _prefetch(v, sources) if key == "prefetch" else _ANY.decode(v) for key, v in top.items()}
    return HookBody(items, sources)


def _prefetch(raw: msgspec.Raw, sources: dict[int, msgspec.Raw]) -> Any:
    if bytes(raw).lstrip()[:1] != b"{":
        return _ANY.decode(raw)
    keys = _TOP.decode(raw)
    return {key: _value(value, sources) for key, value in keys.items()}


def _value(raw: msgspec.Raw, sources: dict[int, msgspec.Raw]) -> Any:
    try:
        value: Any = _VALUE.decode(raw)
    except msgspec.ValidationError:
        return _ANY.decode(raw)  # e.g. null, a list, or an `entry` that is not a list of objects
    entries = value.get("entry")
    if entries is None:
        sources[id(value)] = raw
        return value
    for entry in entries:
        resource_raw = entry.get("resource")
        if resource_raw is None:
            continue
        try:
            resource: Any = _RESOURCE.decode(resource_raw)
        except msgspec.ValidationError:
            resource = _ANY.decode(resource_raw)  # not an object: judged (and refused) downstream
        else:
            sources[id(resource)] = resource_raw
        entry["resource"] = resource
    return value

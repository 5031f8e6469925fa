"""Prefetch: template rendering, the prefetch shapes a CDS client may send, and the FHIR fallback.

CDS Hooks 2.0 lets a client satisfy none, some or all of a service's prefetch templates, so every key
arrives in one of these shapes, and each is handled the same way for every key:

===========================  =========================================================================
shape of ``prefetch[key]``   meaning and what `gather` does
===========================  =========================================================================
absent                       not satisfied (or the client's fetch failed): fetch from ``fhirServer``
``null``                     read template: "no such resource", no data. Search: not satisfied, fetch
Bundle with entries          the data: used as is
Bundle, 0 entries/no entry   a search with no results: valid, no data (never "not checked")
Bundle with ``next`` link    the first page: use it and fetch the remaining pages from ``fhirServer``
                             (a next link outside ``fhirServer`` is not followed; the whole search
                             is fetched from ``fhirServer`` instead)
OperationOutcome             the client's prefetch failed: fetch
anything else                a list, a string, a resource of the wrong type or id: fetch
===========================  =========================================================================

When a key must be fetched and there is no usable FHIR server, or the server fails, the request cannot be
screened: `PreconditionFailed` (412) names every such key as ``prefetch.<key>``. "Absent" or an
OperationOutcome is never read as "the patient has none".

Medications referenced by MedicationRequest/MedicationStatement (``medicationReference``) are collected
from ``_include`` entries, any prefetch bundle and ``context.draftOrders``; those still missing are read
from the server once each, within the same deadline. A reference that cannot be resolved is just absent
from `Gathered.medications` and the caller reports it. Contained references (``#id``) are left to the
caller.

The keys to fetch (and then the Medications to read) are fetched concurrently, at most
`MAX_PARALLEL_FETCHES` at a time per call, over the caller's session (its connection pool) and within the
client's one deadline and byte budget. The outcome does not depend on the order they finish in: resources
stay in template order, and when several keys fail the 412 names the first in template order, as a
sequential fetch would.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from cds.errors import FhirError, Issue, PreconditionFailed
from cds.fhir.client import FhirClient

log = logging.getLogger(__name__)

# Fetches in flight at once for one call: enough for the five screening searches to overlap, few enough
# not to flood the EHR's FHIR server (each gunicorn thread may run one call).
MAX_PARALLEL_FETCHES = 4

_T = TypeVar("_T")

_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_CONTEXT_TOKEN = re.compile(r"^context\.([A-Za-z_][A-Za-z0-9_]*)$")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
_USER_ID = re.compile(r"(?:^|/)(Practitioner|PractitionerRole|Patient|RelatedPerson)/([A-Za-z0-9\-.]{1,64})$")
_READ_TEMPLATE = re.compile(r"^([A-Z][A-Za-z]{1,63})/[^/?]+$")
_TYPE_AT_START = re.compile(r"^([A-Z][A-Za-z]{1,63})(?:[/?]|$)")
_MEDICATION_REF = re.compile(r"(?:^|/)Medication/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_MEDICATION_USERS = frozenset({"MedicationRequest", "MedicationStatement"})


# ---------------------------------------------------------------------- templates


def template_tokens(template: str) -> set[str]:
    """The tokens a template uses, without braces: {"context.patientId", "userPractitionerId", ...}."""
    return {match.group(1) for match in _TOKEN.finditer(template)}


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The template with every token replaced by its URL-encoded value; None if any token cannot be resolved.

    Resolvable: ``{{context.<field>}}`` for a root-level primitive (string, number, boolean) of the hook
    context, and the user tokens derived from ``context.userId`` ("Practitioner/abc" gives
    ``{{userPractitionerId}}`` = "abc"; the other user tokens are then unresolvable).
    """
    unresolved = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal unresolved
        value = _token_value(match.group(1), context)
        if value is None:
            unresolved = True
            return ""
        return quote(value, safe="")

    rendered = _TOKEN.sub(substitute, template)
    return None if unresolved else rendered


def _token_value(token: str, context: Mapping[str, Any]) -> str | None:
    context_field = _CONTEXT_TOKEN.match(token)
    if context_field:
        return _primitive(context.get(context_field.group(1)))
    wanted_type = _USER_TOKENS.get(token)
    if wanted_type is None:
        return None
    user = context.get("userId")
    match = _USER_ID.search(user) if isinstance(user, str) else None
    if match is None or match.group(1) != wanted_type:
        return None
    return match.group(2)


def _primitive(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


# ---------------------------------------------------------------------- gathering


@dataclass(frozen=True)
class Gathered:
    """The data for one request, whatever mix of prefetch and FHIR fetches it came from."""

    resources: dict[str, tuple[dict[str, Any], ...]]  # prefetch key -> resources, de-duplicated by (type, id)
    medications: dict[str, dict[str, Any]]  # "Medication/<id>" -> Medication
    fetched: tuple[str, ...]  # keys (wholly or partly) fetched from the FHIR server; no data, for the audit


def medication_key(reference: str) -> str | None:
    """The key "Medication/<id>" for a relative or absolute Medication reference.

    None for a contained reference ("#x") or anything that does not name a Medication.
    """
    if not reference or reference.startswith("#"):
        return None
    match = _MEDICATION_REF.search(reference)
    return f"Medication/{match.group(1)}" if match else None


@dataclass
class _Plan:
    key: str
    template: str
    is_read: bool
    resource_type: str | None
    resources: tuple[dict[str, Any], ...] = ()
    fetch: bool = False  # fetch the whole template from the server
    next_link: str | None = None  # fetch only the remaining pages, from this link


class _LazyClient:
    """Calls the factory at most once, and only when something actually has to be fetched."""

    def __init__(self, factory: Callable[[], FhirClient | None]) -> None:
        self._factory = factory
        self._made = False
        self._client: FhirClient | None = None
        self.error: FhirError | None = None

    def get(self) -> FhirClient | None:
        if not self._made:
            self._made = True
            try:
                self._client = self._factory()
            except FhirError as exc:  # e.g. InsecureFhirServer: no usable server
                self.error = exc
        return self._client


def gather(
    prefetch_templates: Mapping[str, str],
    request: Mapping[str, Any],
    needed: Collection[str],
    *,
    client_factory: Callable[[], FhirClient | None],
) -> Gathered:
    """Resources for every key in `needed`, from the request's prefetch or from its FHIR server."""
    unknown = sorted(set(needed) - set(prefetch_templates))
    if unknown:
        raise ValueError(f"no prefetch template for needed keys: {', '.join(unknown)}")
    raw_context = request.get("context")
    context: Mapping[str, Any] = raw_context if isinstance(raw_context, Mapping) else {}
    raw_prefetch = request.get("prefetch")
    prefetch: Mapping[str, Any] = raw_prefetch if isinstance(raw_prefetch, Mapping) else {}

    keys = [key for key in prefetch_templates if key in needed]  # template order: deterministic
    plans = [_plan(key, prefetch_templates[key], key in prefetch, prefetch.get(key), context) for key in keys]

    lazy = _LazyClient(client_factory)
    to_fetch = [plan for plan in plans if plan.fetch or plan.next_link is not None]
    if to_fetch:
        client = lazy.get()
        if client is None:
            raise _unobtainable(to_fetch, lazy.error)
        _run_all([partial(_fetch, plan, client, context) for plan in to_fetch])

    # a prefetched Bundle's entries were de-duplicated as they were read; fetched pages were not
    fetching = {id(plan) for plan in to_fetch}
    resources = {p.key: _dedupe(p.resources) if id(p) in fetching else p.resources for p in plans}
    fetched = tuple(plan.key for plan in to_fetch)
    medications = _medications(resources.values(), context, lazy)
    return Gathered(resources=resources, medications=medications, fetched=fetched)


def _plan(key: str, template: str, present: bool, value: Any, context: Mapping[str, Any]) -> _Plan:
    read = _READ_TEMPLATE.match(template)
    type_match = _TYPE_AT_START.match(template)
    plan = _Plan(
        key=key,
        template=template,
        is_read=read is not None,
        resource_type=type_match.group(1) if type_match else None,
    )
    if not present:
        plan.fetch = True
    elif value is None:
        plan.fetch = not plan.is_read  # null: "no data" for a read, "not satisfied" for a search
    elif not isinstance(value, dict):
        plan.fetch = True
    elif plan.is_read:
        if value.get("resourceType") == plan.resource_type and value.get("id") == _read_id(template, context):
            plan.resources = (value,)
        else:  # OperationOutcome, Bundle, another type, no id: not the resource asked for
            plan.fetch = True
    elif value.get("resourceType") == "Bundle":
        entries = _bundle_entries(value)
        if entries is None:
            plan.fetch = True
        else:
            plan.resources = entries
            plan.next_link = _next_link(value)
    else:  # OperationOutcome or any other resource
        plan.fetch = True
    return plan


def _read_id(template: str, context: Mapping[str, Any]) -> str | None:
    """The id a read template asks for (so a prefetched resource with another id is not taken for it)."""
    rendered = render_template(template, context)
    return unquote(rendered.split("/", 1)[1]) if rendered is not None else None


def _bundle_entries(bundle: Mapping[str, Any]) -> tuple[dict[str, Any], ...] | None:
    """Entry resources, de-duplicated by (type, id) as `_dedupe` does, OperationOutcome entries (search
    warnings) skipped; None when malformed. One pass: a large chart is walked once here."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return None
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        resource = entry.get("resource")
        if resource is None:
            continue
        if not isinstance(resource, dict):
            return None
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return None
        search = entry.get("search")
        if rtype == "OperationOutcome" or (isinstance(search, dict) and search.get("mode") == "outcome"):
            continue
        rid = resource.get("id")
        if isinstance(rid, str):
            if (rtype, rid) in seen:
                continue
            seen.add((rtype, rid))
        out.append(resource)
    return tuple(out)


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    """The `next` link; "" when one is announced without a usable URL (so the search is redone)."""
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else ""
    return None


def _unobtainable(plans: Iterable[_Plan], error: FhirError | None) -> PreconditionFailed:
    why = (
        f"the FHIR server cannot be used: {error.message}"
        if error is not None
        else "the request names no fhirServer to fetch it from"
    )
    return PreconditionFailed(
        "required prefetch data is missing and could not be fetched",
        issues=[
            Issue(
                "incomplete",
                f"Prefetch '{plan.key}' was neither provided in a usable form nor fetchable: {why}.",
                path=f"prefetch.{plan.key}",
            )
            for plan in plans
        ],
    )


def _fetch(plan: _Plan, client: FhirClient, context: Mapping[str, Any]) -> None:
    next_url = _continuation(plan.next_link, client) if plan.next_link is not None else None
    try:
        if next_url is not None:
            plan.resources = plan.resources + tuple(client.search(next_url))
            return
        # not prefetched in a usable form, or its next link points away from fhirServer (never followed,
        # the token is not sent there): fetch the whole search from fhirServer instead
        query = render_template(plan.template, context)
        if query is None:
            raise PreconditionFailed(
                "prefetch data is missing and the FHIR query could not be built from the hook context",
                issues=[
                    Issue(
                        "incomplete",
                        f"Prefetch '{plan.key}' was not provided in a usable form, and its template needs "
                        "context values the request does not carry, so it could not be fetched.",
                        path=f"prefetch.{plan.key}",
                    )
                ],
            )
        if plan.is_read:
            found = client.read(query)
            plan.resources = (found,) if found is not None else ()
        else:
            plan.resources = tuple(client.search(query, widen_pages=True))
    except FhirError as exc:
        log.warning("FHIR fetch for prefetch key %s failed: %s", plan.key, exc.message)
        raise PreconditionFailed(
            "required data could not be fetched from the FHIR server",
            issues=[
                Issue(
                    "incomplete",
                    f"Prefetch '{plan.key}' was not provided in full, and fetching it from the FHIR server "
                    f"failed: {exc.message}.",
                    path=f"prefetch.{plan.key}",
                )
            ],
        ) from exc


def _continuation(link: str, client: FhirClient) -> str | None:
    """A prefetched page's next link as an absolute URL under fhirServer; None when it points elsewhere."""
    if not link:
        return None
    absolute = link if urlsplit(link).scheme else f"{client.base_url}/{link.lstrip('/')}"
    return absolute if client.is_under_base(absolute) else None


def _dedupe(resources: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, Any]] = []
    for resource in resources:
        rid, rtype = resource.get("id"), resource.get("resourceType")
        if isinstance(rid, str) and isinstance(rtype, str):
            if (rtype, rid) in seen:
                continue
            seen.add((rtype, rid))
        out.append(resource)
    return tuple(out)


# ---------------------------------------------------------------------- medications


def _draft_resources(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Resources of context.draftOrders (a Bundle; the sandbox omits Bundle.type)."""
    draft = context.get("draftOrders")
    if not isinstance(draft, Mapping):
        return []
    entries = draft.get("entry")
    if not isinstance(entries, list):
        return []
    return [
        entry["resource"]
        for entry in entries
        if isinstance(entry, Mapping) and isinstance(entry.get("resource"), dict)
    ]


def _medications(
    gathered: Iterable[tuple[dict[str, Any], ...]],
    context: Mapping[str, Any],
    lazy: _LazyClient,
) -> dict[str, dict[str, Any]]:
    pool = [resource for resources in gathered for resource in resources] + _draft_resources(context)
    medications: dict[str, dict[str, Any]] = {}
    for resource in pool:
        rid = resource.get("id")
        if resource.get("resourceType") == "Medication" and isinstance(rid, str) and rid:
            medications.setdefault(f"Medication/{rid}", resource)

    wanted: dict[str, list[str]] = {}  # key -> the references naming it
    for resource in pool:
        if resource.get("resourceType") not in _MEDICATION_USERS:
            continue
        ref = resource.get("medicationReference")
        reference = ref.get("reference") if isinstance(ref, Mapping) else None
        if not isinstance(reference, str):
            continue
        key = medication_key(reference)
        if key is None or key in medications:
            continue
        wanted.setdefault(key, []).append(reference)
    if not wanted:
        return medications
    client = lazy.get()
    if client is None:
        return medications
    # an absolute reference is read only when it lies under fhirServer: the same id elsewhere may be a
    # different Medication
    readable = [
        key
        for key, references in wanted.items()
        if any(not urlsplit(ref).scheme or client.is_under_base(ref) for ref in references)
    ]
    reads = _run_all([partial(_read_medication, client, key) for key in readable])
    for key, found in zip(readable, reads, strict=True):
        if found is not None:
            medications[key] = found
    return medications


def _read_medication(client: FhirClient, key: str) -> dict[str, Any] | None:
    try:
        return client.read(key)
    except FhirError as exc:
        log.info("could not read a referenced Medication: %s", exc.message)
        return None


# ---------------------------------------------------------------------- running fetches concurrently


def _run_all(tasks: Sequence[Callable[[], _T]]) -> list[_T]:
    """Every task's result, in task order; at most `MAX_PARALLEL_FETCHES` run at once.

    When tasks fail, the first failure in task order is raised (after the running ones have finished, so
    no fetch outlives the call) and tasks not yet started are dropped: the same error a sequential run
    would raise. A single task runs on the caller's thread.
    """
    if len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=min(len(tasks), MAX_PARALLEL_FETCHES)) as pool:
        # each task runs in a copy of the caller's context (context variables, e.g. for logging)
        futures: list[Future[_T]] = [pool.submit(contextvars.copy_context().run, task) for task in tasks]
        wait(futures, return_when=FIRST_EXCEPTION)
        if any(future.done() and future.exception() is not None for future in futures):
            for future in futures:
                future.cancel()  # only those not started; the running ones finish (bounded by the deadline)
        wait(futures)
    for future in futures:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]

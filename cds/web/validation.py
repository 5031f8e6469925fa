"""Untrusted request bodies: parsed, limited, checked against our JSON Schemas, every failure by its path.

Shared by the HTTP edge (after the media type and length checks that need the HTTP request), the offline
`screen` command and the fuzz tests, so all three judge a body by the same steps. Messages never include
the offending value: it may be patient data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from cds.config import Settings
from cds.errors import BadRequest, Issue, PayloadTooLarge
from cds.fhir.decoding import decode_json
from cds.web.limits import depth_exceeds

if TYPE_CHECKING:  # the command line imports this module; the knowledge loader is heavy and not needed here
    from cds.clinical.knowledge import ServiceDefinition

MAX_ISSUES = 10


def json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _message(error: Any) -> str:
    if error.validator in {"required", "dependentRequired"}:
        return str(error.message)  # names the missing property, never a value
    if error.validator in {"enum", "const"}:
        return f"value is not one of the allowed values: {error.validator_value}"
    if error.validator == "type":
        return f"value must be of type {error.validator_value}"
    if error.validator == "pattern":
        return "value does not have the required format"
    return f"value fails the {error.validator} constraint"


def check_schema(validator: Draft202012Validator, document: Any, summary: str) -> None:
    """Raise BadRequest naming up to MAX_ISSUES failing paths, shallowest first."""
    errors = sorted(
        validator.iter_errors(document),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        issues = [Issue("structure", _message(e), json_path(e.absolute_path)) for e in errors[:MAX_ISSUES]]
        raise BadRequest(summary, issues=issues)


def read_json_object(raw: bytes, validator: Draft202012Validator, settings: Settings) -> dict[str, Any]:
    """The body as a JSON object the schema accepts, or a ClientError saying what is wrong and where."""
    if len(raw) > settings.max_body_bytes:
        raise PayloadTooLarge(f"the request body is over {settings.max_body_bytes} bytes")
    try:
        body = decode_json(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise BadRequest("the request body is not valid JSON: nesting too deep") from None
    return check_json_object(body, validator, settings)


def check_json_object(body: Any, validator: Draft202012Validator, settings: Settings) -> dict[str, Any]:
    """Parsed JSON that must be an object within the depth limit and valid against the schema."""
    if not isinstance(body, dict):
        raise BadRequest(
            "the request body must be a JSON object", issues=[Issue("invalid", "expected an object", "$")]
        )
    # Depth is limited wherever the JSON is walked recursively: everything but the prefetch resources,
    # which are read field by field (and, behind a finding, depth-checked before model validation).
    # The parser itself refuses pathological depth (RecursionError in read_json_object).
    outer = {key: value for key, value in body.items() if key != "prefetch"}
    if depth_exceeds(outer, settings.max_json_depth):
        raise BadRequest(f"the request body is nested deeper than {settings.max_json_depth} levels")
    check_schema(validator, body, "the request does not match the CDS Hooks 2.0 schema")
    return body


def check_hook_call(service: ServiceDefinition, body: Mapping[str, Any], settings: Settings) -> None:
    """A schema-valid hook request fits the service it was sent to and is not too large to screen."""
    if body["hook"] != service.hook:
        raise BadRequest(
            f"this service answers the {service.hook} hook",
            issues=[Issue("invalid", f"hook must be {service.hook!r} for this service", "$.hook")],
        )
    if _count_resources(body) > settings.max_resources:
        raise PayloadTooLarge(f"the request carries more than {settings.max_resources} resources")


def _count_resources(body: Mapping[str, Any]) -> int:
    count = 0
    for value in (body.get("prefetch") or {}).values():
        if isinstance(value, dict):
            entries = value.get("entry")
            count += len(entries) if isinstance(entries, list) else 1
    drafts = body.get("context", {}).get("draftOrders")
    if isinstance(drafts, dict) and isinstance(drafts.get("entry"), list):
        count += len(drafts["entry"])
    return count

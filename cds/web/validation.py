"""Check untrusted JSON against one of our JSON Schemas and report each failure by its JSON path.

Shared by the HTTP edge and the offline `screen` command. Messages never include the offending value:
it may be patient data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator

from cds.errors import BadRequest, Issue

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

"""What every CDS Hooks response must be, checked the same way wherever a test gets one."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

from cds.clinical.knowledge import Knowledge


def deterministic_uuids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: str(uuid.UUID(int=next(counter)))


def assert_valid_response(knowledge: Knowledge, payload: Any) -> None:
    errors = list(knowledge.response_validator.iter_errors(payload))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    assert_no_empty_values(payload)


def assert_no_empty_values(value: Any, path: str = "$") -> None:
    """CDS Hooks: no null, "", [] or {} anywhere, except the top-level cards list."""
    if isinstance(value, dict):
        assert value, f"empty object at {path}"
        for key, child in value.items():
            if path == "$" and key == "cards" and child == []:
                continue
            assert_no_empty_values(child, f"{path}.{key}")
    elif isinstance(value, list):
        assert value, f"empty array at {path}"
        for index, child in enumerate(value):
            assert_no_empty_values(child, f"{path}[{index}]")
    else:
        assert value is not None, f"null at {path}"
        if isinstance(value, str):
            assert value.strip(), f"empty string at {path}"

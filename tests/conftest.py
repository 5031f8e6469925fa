"""Shared fixtures: the app on embedded defaults with a pinned clock, response validation, log capture.

Every log record the whole suite produces is kept (see `LOG_CAPTURE`); tests/test_zz_log_hygiene.py, which
runs last, fails if any test patient's id or name or any token registered in `SENSITIVE` appears in one.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds.app import create_app
from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.config import load_settings
from tests.support.fhir_server import FhirServerHandle, running_fhir_server

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SENSITIVE: set[str] = set()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string still must not hide the raw message
            text = str(record.msg)
        extra = {
            k: v
            for k, v in record.__dict__.items()
            if k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
        }
        self.lines.append(f"{record.name} {text} {json.dumps(extra, default=str)}")


LOG_CAPTURE = _Capture()


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(LOG_CAPTURE)
    root.setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServerHandle]:
    """The one real FHIR server of the run: sekmet with the nine test patients, started on first use.

    Tests may add resources of their own (ids starting `ketcds-test-`), never change the nine patients'.
    """
    with running_fhir_server() as server:
        yield server


def deterministic_uuids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: str(uuid.UUID(int=next(counter)))


@pytest.fixture
def make_app(tmp_path: Path, knowledge: Knowledge) -> Callable[..., Flask]:
    def factory(**overrides: Any) -> Flask:
        values: dict[str, Any] = {
            "dev_mode": True,
            "database_url": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
            "audit_hash_key": "test-key",
        }
        values.update(overrides)
        settings = load_settings(environ={}, overrides=values)
        policy_knowledge = knowledge if "policy_file" not in overrides else None
        return create_app(
            settings, knowledge=policy_knowledge, clock=lambda: NOW, new_uuid=deterministic_uuids()
        )

    return factory


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    flask_app = make_app()
    yield flask_app
    flask_app.extensions["ketamine_cds"].flush()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def call(client: FlaskClient, knowledge: Knowledge) -> Callable[..., Any]:
    """POST a hook request to its service and validate the response against our response schema."""

    def do(body: dict[str, Any], *, expect: int = 200) -> Any:
        service = next(s.id for s in knowledge.services.values() if s.hook == body["hook"])
        response = client.post(f"/cds-services/{service}", json=body)
        assert response.status_code == expect, response.get_data(as_text=True)[:2000]
        payload = response.get_json()
        if expect == 200:
            assert_valid_response(knowledge, payload)
        else:
            assert payload["resourceType"] == "OperationOutcome"
        return payload

    return do


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

"""Shared fixtures: the app on embedded defaults with a pinned clock, a screen without HTTP, log capture.

Every log record the whole suite produces is kept (tests/support/logs.py); when the run ends, the session
fails if any test patient's id or name, or any token registered in `SENSITIVE`, appears in one of them
(`pytest_sessionfinish` below), whichever tests ran and in whatever order.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from cds.app import create_app
from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.clinical.screening import Screener
from cds.config import load_settings
from cds.storage.store import Store
from cds.web.validation import check_schema
from tests.support.constants import NOW, TEST_HASH_KEY
from tests.support.fhir_server import FhirServerHandle, running_fhir_server
from tests.support.logs import LOG_CAPTURE, SENSITIVE, leaks
from tests.support.responses import assert_no_empty_values, assert_valid_response, deterministic_uuids

__all__ = [  # what older tests import from here; new code imports from tests.support
    "NOW",
    "SENSITIVE",
    "TEST_HASH_KEY",
    "assert_no_empty_values",
    "assert_valid_response",
    "deterministic_uuids",
]
_LEAKS: list[str] = []

# Every Hypothesis property runs the same examples on every run (a fixed seed derived from the test's
# name), unless its own settings say otherwise (tests/test_fuzz.py has an opt-in random mode).
hypothesis.settings.register_profile("ketamine-cds", derandomize=True)
hypothesis.settings.load_profile("ketamine-cds")


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(LOG_CAPTURE)
    root.setLevel(logging.DEBUG)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Log hygiene over everything the run logged: a leak fails the run, whichever test caused it."""
    _LEAKS[:] = leaks(LOG_CAPTURE.lines)
    if _LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _LEAKS:
        terminalreporter.section("log hygiene: FAILED", sep="=", red=True, bold=True)
        terminalreporter.write_line(f"{len(_LEAKS)} log line(s) leak patient data or tokens:")
        for line in _LEAKS[:25]:
            terminalreporter.write_line(line)


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


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once per run; each app copies it instead of running Alembic again."""
    path = tmp_path_factory.mktemp("template") / "cds.sqlite3"
    store = Store.open(f"sqlite:///{path}")
    store.migrate()
    store.close()
    assert not path.with_name(path.name + "-wal").exists(), "closing the store checkpoints the journal"
    return path


@pytest.fixture
def make_app(tmp_path: Path, knowledge: Knowledge, migrated_database: Path) -> Iterator[Callable[..., Flask]]:
    """Apps on the test's own SQLite file and directories; their outboxes are shipped and closed after the
    test (a shipper left running would retry against a database the test has dropped)."""
    made: list[Flask] = []

    def factory(*, clock: Callable[[], datetime] = lambda: NOW, **overrides: Any) -> Flask:
        """An app on `clock` (the suite's pinned instant unless given) with these settings."""
        values: dict[str, Any] = {
            "dev_mode": True,
            "audit_hash_key": TEST_HASH_KEY,
            "work_dir": str(tmp_path),
            "outbox_dir": str(tmp_path / "outbox"),
        }
        values.update(overrides)
        fresh_copy = "database_url" not in overrides
        if fresh_copy:
            database = tmp_path / "cds.sqlite3"
            if not database.exists():
                shutil.copyfile(migrated_database, database)
            values["database_url"] = f"sqlite:///{database}"
        settings = load_settings(environ={}, overrides=values)
        policy_knowledge = knowledge if "policy_file" not in overrides else None
        flask_app = create_app(
            settings,
            knowledge=policy_knowledge,
            clock=clock,
            new_uuid=deterministic_uuids(),
            maintenance=not fresh_copy,  # a copy of the migrated file: nothing to migrate or purge
        )
        made.append(flask_app)
        return flask_app

    yield factory
    for flask_app in made:
        flask_app.extensions["ketamine_cds"].outbox.close()


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


@pytest.fixture(scope="session")
def screener(knowledge: Knowledge) -> Screener:
    settings = load_settings(environ={}, overrides={"dev_mode": True})
    return Screener(knowledge, settings, requests.Session(), lambda: NOW, deterministic_uuids())


@pytest.fixture(scope="session")
def screen(screener: Screener, knowledge: Knowledge) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """One hook request through the screening function alone (no Flask, no database): its valid cards.

    The request is checked against the CDS Hooks request schema first, as the HTTP edge checks it.
    """

    def do(body: dict[str, Any]) -> list[dict[str, Any]]:
        check_schema(knowledge.request_validator, body, "the request does not match the CDS Hooks schema")
        service = next(s for s in knowledge.services.values() if s.hook == body["hook"])
        cards = screener.screen(service, body).cards
        assert_valid_response(knowledge, {"cards": cards})
        return cards

    return do

"""Acknowledged feedback survives a SIGKILL of the real server in the middle of a burst.

`ketamine-cds serve --dev --workers 2` runs as a subprocess in its own process group (gunicorn, gthread
workers, exactly as in production) against a database that does not exist yet: the server applies the
migrations itself, once before the workers start and again (a no-op) in each worker. The test gets real
cards from a service call, then posts feedback on them from several threads and SIGKILLs the whole process
group while clients are still posting. Afterwards every feedback that got a 200 must be in the database.
Runs on a SQLite file and on PostgreSQL (a fresh schema).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from cds.storage.store import MIGRATIONS_DIR, Store, feedback_table, issued_card_table
from tests.support.backends import fresh_postgres_schema
from tests.support.builders import (
    RXNORM,
    coding,
    concept,
    dosage,
    hook_request,
    ketamine_order,
    med_statement,
)

KETAMINE_CDS = Path(sys.executable).with_name("ketamine-cds")
CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
CLIENT_THREADS = 8
POSTS_PER_THREAD = 50  # at most 400 requests in all
KILL_AFTER_ACKS = 120
# Only stops a wait from hanging forever (the test then fails saying what it waited for); how long the
# run takes is not under test.
HANG_GUARD_S = 180
SERVICE = "ketamine-order-select"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database the server has never seen: no schema yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    else:
        with fresh_postgres_schema() as url:
            yield url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(database_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KETAMINE_CDS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        KETAMINE_CDS_DATABASE_URL=database_url,
        KETAMINE_CDS_AUDIT_HASH_KEY="durability-test-key",
        KETAMINE_CDS_LOG_LEVEL="WARNING",
    )
    return env


def _wait_until_up(base: str, server: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    with requests.Session() as session:
        session.trust_env = False
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"the server exited early:\n{log.read_text(errors='replace')}")
            try:
                if session.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
    pytest.fail(f"the server did not come up:\n{log.read_text(errors='replace')}")


def _real_cards(base: str, calls: int) -> list[dict[str, Any]]:
    """Cards the server issued for `calls` order-select requests (a benzodiazepine interaction each)."""
    cards: list[dict[str, Any]] = []
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(calls):
            statement = med_statement(CLONAZEPAM, dosages=[dosage(dose=2, frequency=2)])
            body = hook_request("order-select", drafts=[ketamine_order()], statements=[statement])
            response = session.post(f"{base}/cds-services/{SERVICE}", json=body, timeout=10)
            assert response.status_code == 200, response.text[:2000]
            cards.extend(c for c in response.json()["cards"] if c.get("overrideReasons"))
    assert cards, "the scenario should produce cards with override reasons"
    return cards


def _wait_for_issued_cards(database_url: str, uuids: set[str], deadline: float) -> None:
    """Issued cards are written by a background thread in the worker; wait until all are in."""
    store = Store.open(database_url)
    try:
        while True:
            with store.engine.connect() as conn:
                query = sa.select(issued_card_table.c.uuid).where(issued_card_table.c.uuid.in_(uuids))
                found = set(conn.scalars(query))
            if found == uuids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        store.close()
    assert found == uuids, f"{len(uuids - found)} issued cards were never recorded"


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_acknowledged_feedback_survives_sigkill(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = [
        str(KETAMINE_CDS),
        "serve",
        "--dev",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    deadline = time.monotonic() + HANG_GUARD_S
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            command,
            env=_server_env(database_url),
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: master and workers die together
        )
    acked: dict[str, str] = {}  # comment -> card uuid, for every feedback answered 200
    failed: list[str] = []
    interrupted: list[str] = []  # sent, and no answer came: the server died with it in flight
    try:
        _wait_until_up(base, server, log, deadline)
        cards = _real_cards(base, calls=4)
        _wait_for_issued_cards(database_url, {c["uuid"] for c in cards}, deadline)

        lock = threading.Lock()
        enough = threading.Event()
        run = uuid.uuid4().hex[:8]

        def client(n: int) -> None:
            with requests.Session() as session:
                session.trust_env = False
                for i in range(POSTS_PER_THREAD):
                    card = cards[(n * POSTS_PER_THREAD + i) % len(cards)]
                    comment = f"{run}-{n}-{i}"
                    body = {
                        "feedback": [
                            {
                                "card": card["uuid"],
                                "outcome": "overridden",
                                "overrideReason": {
                                    "reason": card["overrideReasons"][0],
                                    "userComment": comment,
                                },
                                "outcomeTimestamp": _timestamp(),
                            }
                        ]
                    }
                    try:
                        response = session.post(
                            f"{base}/cds-services/{SERVICE}/feedback", json=body, timeout=5
                        )
                    except requests.RequestException:
                        with lock:
                            failed.append(comment)
                            interrupted.append(comment)
                        return  # the server is gone
                    with lock:
                        if response.status_code == 200:
                            acked[comment] = card["uuid"]
                            if len(acked) >= KILL_AFTER_ACKS:
                                enough.set()
                        else:
                            failed.append(comment)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        got_enough = enough.wait(timeout=max(deadline - time.monotonic(), 0.1))
        os.killpg(server.pid, signal.SIGKILL)  # master and workers, no chance to clean up
        for t in threads:
            t.join(timeout=10)
        server.wait(timeout=10)
        assert got_enough, f"only {len(acked)} acknowledgements before the deadline"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    output = log.read_text(errors="replace")

    assert failed, "the kill should have interrupted the burst (every request was answered)"
    assert len(acked) < CLIENT_THREADS * POSTS_PER_THREAD
    assert not [line for line in output.splitlines() if "error" in line.lower() or "Traceback" in line], (
        output
    )

    reopened = Store.open(database_url)
    try:
        with reopened.engine.connect() as conn:
            stored = {
                row.user_comment: row
                for row in conn.execute(
                    sa.select(feedback_table).where(feedback_table.c.user_comment.like(f"{run}-%"))
                )
            }
            versions = list(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
    finally:
        reopened.close()
    print(f"acknowledged {len(acked)}, failed {len(failed)}, stored {len(stored)}")

    # the server migrated the fresh database once, to the newest revision, with two workers starting
    assert versions == [ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()]
    lost = sorted(set(acked) - set(stored))
    assert lost == [], f"{len(lost)} acknowledged feedback items are missing after SIGKILL"
    for comment, card_uuid in acked.items():
        row = stored[comment]
        assert (row.card_uuid, row.outcome, row.service_id) == (card_uuid, "overridden", SERVICE)
        assert row.known_card, "feedback on a card the server issued is attributed to it"
    # anything stored but not acknowledged was in flight when the server died (at most one per client)
    assert set(stored) - set(acked) <= set(interrupted)
    assert len(interrupted) <= CLIENT_THREADS
    # each client posts in turn: what it got acknowledged is its first posts, without a gap
    for n in range(CLIENT_THREADS):
        mine = sorted(
            int(comment.rsplit("-", 1)[1]) for comment in acked if comment.startswith(f"{run}-{n}-")
        )
        assert mine == list(range(len(mine))), f"client {n}: acknowledged out of turn"

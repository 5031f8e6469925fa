"""Acknowledged feedback survives a SIGKILL of the server in the middle of a burst.

The server here is a stand-in: `create_app` below is a minimal Flask app that does what the real feedback
endpoint must do (store with `Store.record_feedback`, which commits, then answer 200), run under gunicorn
with several workers and threads exactly as in production. The whole process group is killed with SIGKILL
while clients are still posting; afterwards every feedback that got a 200 must be in the database.
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

import pytest
import requests
import sqlalchemy as sa
from flask import Flask, request

from cds.store import FeedbackItem, Store, feedback_table
from tests.support.backends import fresh_postgres_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).with_name("gunicorn")
DB_ENV = "KETAMINE_CDS_DURABILITY_DATABASE_URL"
CLIENT_THREADS = 8
POSTS_PER_THREAD = 50  # at most 400 requests in all
KILL_AFTER_ACKS = 120


def create_app() -> Flask:
    """The stand-in feedback service (loaded by gunicorn as `test_durability:create_app()`)."""
    store = Store.open(os.environ[DB_ENV])
    app = Flask("durability-stand-in")

    @app.get("/health")
    def health() -> tuple[str, int]:
        return "", 200

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> tuple[str, int]:
        now = datetime.now(UTC)
        body = request.get_json()
        items = [
            FeedbackItem(
                card_uuid=entry["card"],
                outcome=entry["outcome"],
                override_system=None,
                override_code=None,
                override_display=None,
                user_comment=None,
                accepted_suggestions=tuple(s["id"] for s in entry.get("acceptedSuggestions", [])),
                outcome_at=datetime.fromisoformat(entry["outcomeTimestamp"]),
                received_at=now,
            )
            for entry in body["feedback"]
        ]
        store.record_feedback(service_id, items)  # committed (and synced) before we answer
        return "", 200

    return app


# ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    else:
        with fresh_postgres_schema() as url:
            yield url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"gunicorn exited early:\n{log.read_text(errors='replace')}")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not come up:\n{log.read_text(errors='replace')}")


def test_acknowledged_feedback_survives_sigkill(database_url: str, tmp_path: Path) -> None:
    setup = Store.open(database_url)
    setup.migrate()
    setup.close()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    command = [
        str(GUNICORN),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--pythonpath",
        f"{REPO_ROOT / 'tests'},{REPO_ROOT}",
        "--log-level",
        "warning",
        "test_durability:create_app()",
    ]
    env = {**os.environ, DB_ENV: database_url}
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_up(base, server, log)

        acked: list[str] = []
        failed: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()
        run = uuid.uuid4().hex[:8]

        def client(n: int) -> None:
            with requests.Session() as session:
                for i in range(POSTS_PER_THREAD):
                    card = f"{run}-{n}-{i}"
                    body = {
                        "feedback": [
                            {
                                "card": card,
                                "outcome": "accepted",
                                "acceptedSuggestions": [{"id": f"s-{card}"}],
                                "outcomeTimestamp": datetime.now(UTC).isoformat(),
                            }
                        ]
                    }
                    try:
                        response = session.post(
                            f"{base}/cds-services/ketamine-order-sign/feedback", json=body, timeout=5
                        )
                    except requests.RequestException:
                        with lock:
                            failed.append(card)
                        return  # the server is gone
                    with lock:
                        if response.status_code == 200:
                            acked.append(card)
                            if len(acked) >= KILL_AFTER_ACKS:
                                enough.set()
                        else:
                            failed.append(card)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENT_THREADS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        assert enough.wait(timeout=15), f"only {len(acked)} acknowledgements before the deadline"
        os.killpg(server.pid, signal.SIGKILL)  # master and workers, no chance to clean up
        for t in threads:
            t.join(timeout=15)
        server.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)

    assert failed, "the kill should have interrupted the burst (every request was answered)"
    assert len(acked) < CLIENT_THREADS * POSTS_PER_THREAD
    assert elapsed < 20

    reopened = Store.open(database_url)
    with reopened.engine.connect() as conn:
        stored = set(
            conn.scalars(
                sa.select(feedback_table.c.card_uuid).where(feedback_table.c.card_uuid.like(f"{run}-%"))
            )
        )
    reopened.close()
    print(f"acknowledged {len(acked)}, failed {len(failed)}, stored {len(stored)} in {elapsed:.1f} s")
    lost = sorted(set(acked) - stored)
    assert lost == [], f"{len(lost)} acknowledged feedback items are missing after SIGKILL"
    # anything stored but not acknowledged was in flight when the server died; never more than that
    assert len(stored - set(acked)) <= CLIENT_THREADS

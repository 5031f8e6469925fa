"""The real server (`ketamine-cds serve`, gunicorn) under the faults an operations team meets.

Each test starts its own server processes, a fresh PostgreSQL schema reached through a proxy it can make
refuse or hang, and, where Redis is involved, a redis-server of its own on another port. Loads are small
and timeouts short, so the whole file runs in about a minute. Each test prints what it measured.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from cds.storage.store import Store, audit_table, issued_card_table
from tests.support.builders import (
    RXNORM,
    coding,
    concept,
    dosage,
    hook_request,
    ketamine_order,
    med_statement,
)
from tests.support.cards import findings_carried
from tests.support.faults import FaultyProxy, ServerProcess, private_redis, proxied_postgres, server_env
from tests.test_api_auth import BASE, ISS, Issuer, issuer  # noqa: F401

CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
SELECT = "/cds-services/ketamine-order-select"
SIGN = "/cds-services/ketamine-order-sign"
FAST = {  # short limits: a fault costs a call half a second, not the production defaults
    "STORAGE_WAIT_S": "0.5",
    "DB_CONNECT_TIMEOUT_S": "1",
    "DB_STATEMENT_TIMEOUT_S": "2",
    "REDIS_TIMEOUT_S": "0.5",
    "OUTBOX_INTERVAL_S": "0.05",
    "OUTBOX_MAX_BACKOFF_S": "0.3",
}


@pytest.fixture
def proxied_database() -> Iterator[tuple[str, FaultyProxy]]:
    """A fresh PostgreSQL schema reached through a proxy the test can break."""
    with proxied_postgres() as database:
        yield database


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def _call(hook: str = "order-select", *, user: str = "Practitioner/p1", dose: float = 2) -> dict[str, Any]:
    statement = med_statement(CLONAZEPAM, rid="ms-1", dosages=[dosage(dose=dose, frequency=2)])
    body = hook_request(hook, drafts=[ketamine_order()], statements=[statement], encounter="enc-ops")
    body["context"]["userId"] = user
    return body


def _rules(response: requests.Response) -> set[str]:
    """The rules that answered, on cards of their own or inside a consolidated card."""
    assert response.status_code == 200, response.text[:500]
    return {rule for rule, _ in findings_carried(response.json()["cards"])}


def _database_counts(database_url: str, uuids: list[str]) -> tuple[int, int]:
    """(issued cards among `uuids`, audit records) in the database."""
    store = Store.open(database_url)
    try:
        with store.engine.connect() as conn:
            cards = conn.scalar(
                sa.select(sa.func.count())
                .select_from(issued_card_table)
                .where(issued_card_table.c.uuid.in_(uuids))
            )
            audits = conn.scalar(sa.select(sa.func.count()).select_from(audit_table))
        return int(cards or 0), int(audits or 0)
    finally:
        store.close()


def _wait_for_records(
    database_url: str, uuids: list[str], audits: int, timeout_s: float = 15
) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = _database_counts(database_url, uuids)
        if found == (len(uuids), audits) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _assert_json_lines(output: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        try:
            record = json.loads(line)  # every line, gunicorn's included
        except ValueError:
            pytest.fail(f"a log line that is not JSON: {line[:300]}")
        assert {"time", "level", "logger", "message"} <= set(record)
    assert "Traceback" not in output


def _metric_total(base: str, name: str) -> float:
    text = _session().get(f"{base}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


# ------------------------------------------------------------------------------------------ database


def test_sigkill_with_records_queued_during_an_outage_replays_after_restart(
    proxied_database: tuple[str, FaultyProxy], tmp_path: Path
) -> None:
    """Calls answered while the database refuses connections, then SIGKILL: the restarted server ships
    every issued-card and audit record the dead one had kept."""
    database_url, proxy = proxied_database
    env = server_env(DATABASE_URL=database_url, OUTBOX_DIR=str(tmp_path / "outbox"), **FAST)
    returned: list[str] = []
    with ServerProcess(tmp_path, env, name="first") as server, _session() as session:
        server.wait_ready()
        proxy.refuse()
        for _ in range(6):
            response = session.post(f"{server.base}{SELECT}", json=_call(), timeout=10)
            assert response.status_code == 200
            returned += [card["uuid"] for card in response.json()["cards"]]
        server.signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    assert list((tmp_path / "outbox").rglob("outbox-*.sqlite3")), "the records waited in the outbox file"
    proxy.heal()
    with ServerProcess(tmp_path, env, name="second") as restarted:
        restarted.wait_ready()  # the master replays the dead process's outbox before serving
        cards, audits = _wait_for_records(database_url, returned, audits=6)
    print(f"SIGKILL in an outage: {len(returned)} cards returned, {cards} stored; 6 calls, {audits} audited")
    assert (cards, audits) == (len(returned), 6)
    assert not list((tmp_path / "outbox").rglob("outbox-*.sqlite3"))


def test_database_refusing_then_hanging_mid_load(
    proxied_database: tuple[str, FaultyProxy], tmp_path: Path
) -> None:
    """Two workers under a steady load; the database refuses connections, then hangs, then recovers.
    Every call is answered, none waits past its storage limit, and the database ends up holding every card
    returned and every call's audit record; the metrics count the calls across both workers."""
    database_url, proxy = proxied_database
    env = server_env(DATABASE_URL=database_url, OUTBOX_DIR=str(tmp_path / "outbox"), **FAST)
    returned: list[str] = []
    statuses: Counter[int] = Counter()
    slowest = 0.0
    lock = threading.Lock()
    stop = threading.Event()
    with ServerProcess(tmp_path, env, workers=2) as server:
        server.wait_ready()

        def client() -> None:
            nonlocal slowest
            with _session() as session:
                while not stop.is_set():
                    started = time.monotonic()
                    response = session.post(f"{server.base}{SELECT}", json=_call(), timeout=15)
                    with lock:
                        slowest = max(slowest, time.monotonic() - started)
                        statuses[response.status_code] += 1
                        if response.status_code == 200:
                            returned.extend(card["uuid"] for card in response.json()["cards"])

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        proxy.refuse()
        time.sleep(1.5)
        proxy.hang()
        time.sleep(1.5)
        proxy.heal()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        calls = sum(statuses.values())
        cards, audits = _wait_for_records(database_url, returned, audits=calls)
        counted = _metric_total(server.base, "ketamine_cds_requests_total")
        dropped = _metric_total(server.base, 'ketamine_cds_outbox_records_total{event="dropped"')
        output = server.output()
    print(
        f"refuse+hang mid-load: {calls} calls {dict(statuses)}, slowest {slowest:.2f} s; "
        f"{len(returned)} cards returned, {cards} in the database; {audits} audit records; dropped {dropped}"
    )
    assert statuses == Counter({200: calls})
    assert slowest < 5
    assert (cards, audits) == (len(returned), calls)
    assert counted == calls  # one view across both workers (PROMETHEUS_MULTIPROC_DIR set up by serve)
    assert dropped == 0
    _assert_json_lines(output)


# ------------------------------------------------------------------------------------------ Redis


def test_redis_killed_mid_load_is_503_never_401(
    proxied_database: tuple[str, FaultyProxy],
    tmp_path: Path,
    issuer: Issuer,  # noqa: F811
) -> None:
    """Production mode, signed calls. Redis dies: the database checks tokens instead (200). The database
    goes too: 503 with Retry-After. Both back: 200. Never a 401."""
    database_url, proxy = proxied_database
    issuers = json.dumps([{"iss": ISS, "jwks_file": str(issuer.jwks_file)}])
    with private_redis(tmp_path) as redis_server:
        env = server_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_server.url,
            PUBLIC_BASE_URL=BASE,
            TRUSTED_ISSUERS=issuers,
            OUTBOX_DIR=str(tmp_path / "outbox"),
            **FAST,
        )
        with ServerProcess(tmp_path, env, dev=False) as server, _session() as session:
            server.wait_ready()
            seen: dict[str, Counter[int]] = {}

            def calls(phase: str, n: int = 4) -> Counter[int]:
                counts: Counter[int] = Counter()
                for _ in range(n):
                    # a server process of its own, on the real clock: the token is dated by it too
                    token = issuer.token(f"{BASE}{SELECT}", at=datetime.now(UTC))
                    headers = {"Authorization": f"Bearer {token}"}
                    response = session.post(
                        f"{server.base}{SELECT}", json=_call(), headers=headers, timeout=10
                    )
                    counts[response.status_code] += 1
                    if response.status_code == 503:
                        assert int(response.headers["Retry-After"]) > 0
                        assert response.json()["resourceType"] == "OperationOutcome"
                seen[phase] = counts
                return counts

            assert calls("up") == Counter({200: 4})
            redis_server.kill()
            assert calls("redis down") == Counter({200: 4})
            assert session.get(f"{server.base}/readyz", timeout=5).json()["failing"].keys() == {"redis"}
            proxy.refuse()
            assert calls("redis and database down") == Counter({503: 4})
            proxy.heal()
            redis_server.start()
            time.sleep(0.6)  # the breaker closes
            assert calls("recovered") == Counter({200: 4})
            errors = _metric_total(server.base, "ketamine_cds_replay_cache_errors_total")
    print(f"Redis killed: {dict(seen.items())}; replay-cache errors {errors}")
    assert errors >= 8


# ------------------------------------------------------------------------------------------ shutdown


def test_sigterm_drains_without_resetting_anyone(tmp_path: Path) -> None:
    env = server_env(DATABASE_URL=f"sqlite:///{tmp_path / 'd.sqlite3'}", DRAIN_S="2", LOG_LEVEL="INFO")
    errors: list[str] = []
    answered = Counter[str]()
    with ServerProcess(tmp_path, env) as server:
        server.wait_ready()
        idle = _session()  # a kept-alive connection, idle when SIGTERM arrives
        assert idle.get(f"{server.base}/livez", timeout=5).status_code == 200
        stop = threading.Event()

        def client() -> None:
            with _session() as session:
                while not stop.is_set():
                    try:
                        response = session.post(f"{server.base}{SELECT}", json=_call(), timeout=10)
                        answered[str(response.status_code)] += 1
                    except requests.RequestException as exc:
                        errors.append(type(exc).__name__)

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        time.sleep(0.2)
        readiness = _session().get(f"{server.base}/readyz", timeout=5)
        during = idle.post(f"{server.base}{SELECT}", json=_call(), timeout=10)  # the idle connection, reused
        time.sleep(max(0.0, 1.6 - (time.monotonic() - signalled)))
        stop.set()
        thread.join(timeout=10)
        server.process.wait(timeout=15)
        stopped_after = time.monotonic() - signalled
        output = server.output()
    print(f"SIGTERM drain: {dict(answered)} answered, errors {errors}, stopped {stopped_after:.1f} s after")
    assert readiness.status_code == 503
    assert readiness.json()["failing"] == {"shutdown": "draining: stopping after the calls in flight"}
    assert during.status_code == 200
    assert during.headers.get("Connection") == "close"  # told to reconnect elsewhere, not reset
    assert errors == []
    assert answered["200"] > 0
    assert set(answered) == {"200"}
    assert 2 <= stopped_after < 10
    assert server.process.returncode == 0
    _assert_json_lines(output)


# ------------------------------------------------------------------------------------------ read-only root


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def test_read_only_root_filesystem(tmp_path: Path) -> None:
    """The root filesystem mounted read-only (a private mount namespace); only the work directory, a
    tmpfs, is writable. The server starts two workers, answers, and keeps its temp files, gunicorn's
    heartbeat files, the outbox and the metrics there."""
    if not _unshare_available():
        pytest.skip("mount namespaces (unshare -m) are not available here")
    work = tmp_path / "work"
    work.mkdir()
    wrapper = [
        "unshare",
        "-m",
        "sh",
        "-c",
        'mount -o remount,ro,bind / && mount -t tmpfs -o size=64m tmpfs "$0" && cd "$0" && exec "$@"',
        str(work),
    ]
    env = server_env(
        DATABASE_URL=f"sqlite:///{work}/cds.sqlite3", WORK_DIR=str(work), OUTBOX_DIR=str(work / "outbox")
    )
    with ServerProcess(tmp_path, env, workers=2, wrapper=wrapper) as server, _session() as session:
        server.wait_ready()
        assert _rules(session.post(f"{server.base}{SELECT}", json=_call(), timeout=10))
        metrics = session.get(f"{server.base}/metrics", timeout=5).text
        output = server.output()
    assert "ketamine_cds_requests_total" in metrics
    assert "Read-only file system" not in output
    assert "No usable temporary directory" not in output


# ------------------------------------------------------------------------------------------ suppression


def test_two_processes_share_suppression_with_a_generated_key(
    proxied_database: tuple[str, FaultyProxy], tmp_path: Path
) -> None:
    """Two service processes sharing PostgreSQL and Redis, no pseudonym key configured: the key generated
    on first start is shared, so what one showed at order-select the other does not repeat at order-sign
    to the same user, also after a restart; another user signing sees every card."""
    database_url, _proxy = proxied_database
    with private_redis(tmp_path) as redis_server:
        env = server_env(
            DATABASE_URL=database_url, REDIS_URL=redis_server.url, OUTBOX_DIR=str(tmp_path / "ob")
        )
        with ServerProcess(tmp_path, env, name="a") as a, ServerProcess(tmp_path, env, name="b") as b:
            a.wait_ready()
            b.wait_ready()
            session = _session()
            shown = _rules(session.post(f"{a.base}{SELECT}", json=_call(), timeout=10))
            assert shown
            assert _rules(session.post(f"{b.base}{SIGN}", json=_call("order-sign"), timeout=10)) == set()
            b.stop()
            with ServerProcess(tmp_path, env, name="b-restarted") as b2:
                b2.wait_ready()
                assert _rules(session.post(f"{b2.base}{SIGN}", json=_call("order-sign"), timeout=10)) == set()
                pharmacist = _call("order-sign", user="Practitioner/pharmacist")
                # the pharmacist sees every finding again, bar the patient instructions (not at signing)
                at_sign = _rules(session.post(f"{b2.base}{SIGN}", json=pharmacist, timeout=10))
                assert at_sign == shown - {"ordering-instructions"}
                _assert_json_lines(a.output() + b2.output())
    store = Store.open(database_url)
    try:
        with store.engine.connect() as conn:
            hashes = set(conn.scalars(sa.select(issued_card_table.c.patient_hash)))
    finally:
        store.close()
    assert len(hashes) == 1, "both processes pseudonymise the patient with the same stored key"

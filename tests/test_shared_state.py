"""Cards already shown and JWT ids already seen, in-process, in Redis and in the database."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.connection
import redis.retry

from cds.config import Settings
from cds.errors import ConfigError
from cds.storage.redis_state import RedisReplayCache, RedisSeenFindings, redis_client
from cds.storage.shared_state import (
    DatabaseReplayCache,
    DatabaseSeenFindings,
    FallbackReplayCache,
    InProcessReplayCache,
    InProcessSeenFindings,
    ReplayCache,
    SeenFindings,
    SharedStateUnavailable,
    make_shared_state,
    redact_url,
)
from cds.storage.store import Store
from tests.support.backends import fresh_postgres_schema, redis_prefix, redis_url_or_skip

BACKENDS = ["in-process", "redis", "sqlite", "postgresql"]
WINDOW_S = 1  # Redis keeps real time; the other backends get a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def monotonic(self) -> float:
        return self.t

    def utc(self) -> datetime:
        return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Backend:
    """Makes any number of SeenFindings / ReplayCache objects that share one backend."""

    name: str
    seen: Callable[[], SeenFindings]
    replay: Callable[[], ReplayCache]
    advance: Callable[[float], None]
    shared: bool  # objects made by the factories share state (False for in-process)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with _backend(request.param, tmp_path) as made:
        yield made


@pytest.fixture(params=[b for b in BACKENDS if b != "in-process"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Only backends that replicas share (in-process state belongs to one process by design)."""
    with _backend(request.param, tmp_path) as made:
        yield made


@contextlib.contextmanager
def _backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    clock = FakeClock()
    if kind == "in-process":
        yield Backend(
            "in-process",
            lambda: InProcessSeenFindings(clock.monotonic),
            lambda: InProcessReplayCache(clock.monotonic),
            clock.advance,
            shared=False,
        )
    elif kind == "redis":
        url = redis_url_or_skip()
        clients: list[redis.Redis] = []

        def client() -> redis.Redis:
            clients.append(redis.Redis.from_url(url))  # a separate connection per object, like replicas
            return clients[-1]

        with redis_prefix(url) as prefix:
            yield Backend(
                "redis",
                lambda: RedisSeenFindings(client(), prefix),
                lambda: RedisReplayCache(client(), prefix),
                lambda seconds: time.sleep(seconds + 0.05),
                shared=True,
            )
        for c in clients:
            c.close()
    else:
        with contextlib.ExitStack() as stack:
            if kind == "sqlite":
                url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
            else:
                url = stack.enter_context(fresh_postgres_schema())
            stores: list[Store] = []

            def store() -> Store:
                stores.append(Store.open(url))
                return stores[-1]

            store().migrate()
            yield Backend(
                kind,
                lambda: DatabaseSeenFindings(store(), clock.utc),
                lambda: DatabaseReplayCache(store(), clock.utc),
                clock.advance,
                shared=True,
            )
            for s in stores:
                s.close()


# ------------------------------------------------------------------------------------------------
# SeenFindings
# ------------------------------------------------------------------------------------------------


def test_a_finding_is_suppressed_within_the_window_and_shown_after_it(backend: Backend) -> None:
    seen = backend.seen()
    key = "patient-hash|encounter-hash|ketamine-benzodiazepine"
    assert seen.first_showing(key, "fp-A", WINDOW_S) is True  # order-select: shown
    assert seen.first_showing(key, "fp-A", WINDOW_S) is False  # order-sign, same evidence: suppressed
    assert seen.first_showing(key, "fp-B", WINDOW_S) is True  # the dose changed: shown again
    assert seen.first_showing("another-patient|ketamine-benzodiazepine", "fp-A", WINDOW_S) is True
    backend.advance(WINDOW_S)
    assert seen.first_showing(key, "fp-A", WINDOW_S) is True  # window over: shown again
    assert seen.first_showing(key, "fp-A", WINDOW_S) is False


def test_a_zero_window_disables_suppression(backend: Backend) -> None:
    seen = backend.seen()
    assert all(seen.first_showing("k", "fp", 0) for _ in range(3))
    assert seen.was_shown("k", "fp", 0) is False


def test_was_shown_asks_without_recording(backend: Backend) -> None:
    seen = backend.seen()
    key = "patient-hash|encounter-hash|ketamine-benzodiazepine"
    assert seen.was_shown(key, "fp-A", WINDOW_S) is False  # order-sign without a prior order-select
    assert seen.was_shown(key, "fp-A", WINDOW_S) is False  # ... and asking did not record it
    assert seen.first_showing(key, "fp-A", WINDOW_S) is True  # order-select shows it
    assert seen.was_shown(key, "fp-A", WINDOW_S) is True  # order-sign: same evidence, suppress
    assert seen.was_shown(key, "fp-B", WINDOW_S) is False  # evidence changed: show
    backend.advance(WINDOW_S)
    assert seen.was_shown(key, "fp-A", WINDOW_S) is False  # window over: show


def test_order_sign_reads_every_earlier_card_in_one_lookup(backend: Backend) -> None:
    """Order-select records three findings' cards; order-sign asks about four findings at once and gets
    each one's card in its own position (a finding with new evidence, or never shown, gets None)."""
    seen = backend.seen()
    scope = "patient-hash|encounter-hash|user-hash"
    seen.record_shown(
        [
            (f"{scope}|benzodiazepine", "fp-1", "card-1"),
            (f"{scope}|lamotrigine", "fp-2", "card-2"),
            (f"{scope}|blood-pressure", "fp-3", "card-1"),
        ],
        WINDOW_S,
    )
    asked = [
        (f"{scope}|lamotrigine", "fp-2"),
        (f"{scope}|benzodiazepine", "fp-changed"),
        (f"{scope}|recent-mi", "fp-4"),
        (f"{scope}|blood-pressure", "fp-3"),
    ]
    assert seen.shown_cards(asked, WINDOW_S) == ["card-2", None, None, "card-1"]
    assert seen.shown_cards(asked, 0) == [None, None, None, None]  # suppression off
    assert seen.shown_cards([], WINDOW_S) == []
    backend.advance(WINDOW_S)
    assert seen.shown_cards(asked, WINDOW_S) == [None, None, None, None]  # the window is over


def test_suppression_is_shared_between_instances(shared_backend: Backend) -> None:
    replica_a, replica_b = shared_backend.seen(), shared_backend.seen()
    assert replica_a.first_showing("k", "fp", 60) is True
    assert replica_b.was_shown("k", "fp", 60) is True
    assert replica_b.first_showing("k", "fp", 60) is False


def test_exactly_one_concurrent_caller_shows_the_finding(backend: Backend) -> None:
    instances = [backend.seen() for _ in range(2 if backend.shared else 1)]
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def call(n: int) -> None:
        barrier.wait()
        shown = instances[n % len(instances)].first_showing("k", "race", 60)
        with lock:
            results.append(shown)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


# ------------------------------------------------------------------------------------------------
# ReplayCache
# ------------------------------------------------------------------------------------------------


def test_replay_cache_rejects_a_second_add(backend: Backend) -> None:
    cache = backend.replay()
    assert cache.add_if_new("https://ehr.example.org|jti-1", 60) is True
    assert cache.add_if_new("https://ehr.example.org|jti-1", 60) is False
    assert cache.add_if_new("https://ehr.example.org|jti-2", 60) is True
    assert cache.add_if_new("https://other.example.org|jti-1", 60) is True


def test_replay_cache_forgets_after_the_ttl(backend: Backend) -> None:
    cache = backend.replay()
    assert cache.add_if_new("iss|jti", 1) is True
    backend.advance(1)
    assert cache.add_if_new("iss|jti", 1) is True


def test_replay_is_rejected_across_cache_objects_sharing_the_backend(shared_backend: Backend) -> None:
    first, second = shared_backend.replay(), shared_backend.replay()
    assert first.add_if_new("iss|replayed-jti", 300) is True
    assert second.add_if_new("iss|replayed-jti", 300) is False


def test_implementations_satisfy_the_protocols(backend: Backend) -> None:
    assert isinstance(backend.seen(), SeenFindings)
    assert isinstance(backend.replay(), ReplayCache)


# ------------------------------------------------------------------------------------------------
# When the shared backend fails mid-call
# ------------------------------------------------------------------------------------------------


@dataclass
class RedisWaits:
    """What a Redis client would wait, recorded instead of waited: the timeouts of each connection
    attempt and the back-off between attempts (its sleeps are taken away)."""

    attempts: list[tuple[float | None, float | None]]  # (connect, read) timeout of each attempt
    sleeps: list[float]


@pytest.fixture
def redis_waits(monkeypatch: pytest.MonkeyPatch) -> RedisWaits:
    waits = RedisWaits([], [])
    monkeypatch.setattr(redis.retry, "sleep", waits.sleeps.append)
    connect = redis.connection.Connection._connect

    def counted(self: redis.connection.Connection) -> Any:
        waits.attempts.append((self.socket_connect_timeout, self.socket_timeout))
        return connect(self)

    monkeypatch.setattr(redis.connection.Connection, "_connect", counted)
    return waits


def test_redis_down_shows_cards_but_refuses_tokens(redis_waits: RedisWaits) -> None:
    dead = redis_client("redis://127.0.0.1:1/0")  # the production client settings
    assert RedisSeenFindings(dead).first_showing("k", "fp", 60) is True
    assert RedisSeenFindings(dead).was_shown("k", "fp", 60) is False
    with pytest.raises(SharedStateUnavailable):
        RedisReplayCache(dead).add_if_new("iss|jti", 60)
    dead.close()
    # no long back-off inside a CDS call: each call tries twice, each try bounded by 1 s timeouts, with
    # one pause of 0.1 s between them (base 0.05 s doubled once)
    assert redis_waits.attempts == [(1.0, 1.0)] * 6
    assert redis_waits.sleeps == [0.1] * 3


def test_database_down_shows_cards_but_refuses_tokens(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}")  # no tables
    assert DatabaseSeenFindings(store).first_showing("k", "fp", 60) is True
    assert DatabaseSeenFindings(store).was_shown("k", "fp", 60) is False
    with pytest.raises(SharedStateUnavailable):
        DatabaseReplayCache(store).add_if_new("iss|jti", 60)
    store.close()


# ------------------------------------------------------------------------------------------------
# The factory
# ------------------------------------------------------------------------------------------------


def test_factory_uses_redis_when_configured() -> None:
    url = redis_url_or_skip()
    seen, replay = make_shared_state(Settings(dev_mode=True, redis_url=url), prefix="kcds-test-factory:")
    assert isinstance(seen, RedisSeenFindings)
    # Redis first; without a store there is no database to fall back on while Redis is down
    assert isinstance(replay, FallbackReplayCache)
    assert isinstance(replay.primary, RedisReplayCache)
    assert replay.fallback is None


def test_factory_fails_fast_when_redis_is_unreachable(redis_waits: RedisWaits) -> None:
    settings = Settings(dev_mode=True, redis_url="redis://:s3cret@127.0.0.1:1/0", redis_timeout_s=0.25)
    with pytest.raises(ConfigError, match="REDIS_URL") as excinfo:
        make_shared_state(settings)
    assert "s3cret" not in str(excinfo.value)
    # start-up gives up after one retry, each try bounded by the configured timeout
    assert redis_waits.attempts == [(0.25, 0.25)] * 2
    assert redis_waits.sleeps == [0.1]


def test_factory_defaults(tmp_path: Path) -> None:
    seen, replay = make_shared_state(Settings(dev_mode=True))
    assert isinstance(seen, InProcessSeenFindings)
    assert isinstance(replay, InProcessReplayCache)

    store = Store.open(f"sqlite:///{tmp_path / 'f.sqlite3'}")
    one_worker = make_shared_state(Settings(dev_mode=True, workers=1), store)
    assert isinstance(one_worker[0], InProcessSeenFindings)
    several = make_shared_state(Settings(dev_mode=True, workers=4), store)
    assert isinstance(several[0], DatabaseSeenFindings)
    assert isinstance(several[1], DatabaseReplayCache)
    store.close()


def test_factory_uses_a_shared_database() -> None:
    with fresh_postgres_schema() as url:
        store = Store.open(url)
        seen, replay = make_shared_state(Settings(dev_mode=True, workers=1), store)
        store.close()
    assert isinstance(seen, DatabaseSeenFindings)
    assert isinstance(replay, DatabaseReplayCache)


def test_redact_url() -> None:
    assert redact_url("redis://:pw@cache.example.org:6380/1") == "redis://:***@cache.example.org:6380/1"
    assert redact_url("redis://user:pw@cache/0") == "redis://user:***@cache/0"
    assert redact_url("redis://cache/0") == "redis://cache/0"


def test_a_site_without_redis_never_loads_the_redis_package(tmp_path: Path) -> None:
    """The redis package costs each worker ~6 MB; only a deployment that configures Redis pays for it."""
    program = f"""
import sys
from cds.app import create_app
from cds.config import load_settings
settings = load_settings(environ={{}}, overrides={{
    "dev_mode": True, "database_url": "sqlite:///{tmp_path}/db.sqlite3", "work_dir": "{tmp_path}",
    "outbox_dir": "{tmp_path}/outbox", "audit_hash_key": "k" * 32}})
app = create_app(settings)
assert app.test_client().get("/readyz").status_code == 200
print(sorted(name for name in sys.modules if name == "redis" or name.startswith("redis.")))
"""
    finished = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip().splitlines()[-1] == "[]"

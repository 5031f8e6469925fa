"""What workers and replicas must agree on between calls: cards already shown, and JWT ids already seen.

Two small interfaces, each with interchangeable backends:

    SeenFindings.first_showing(key, fingerprint, window_s)   "no repeats across hooks"
        True  -> not shown within the window: show it (and it is now recorded as shown)
        False -> shown within the window with the same evidence: suppress it
    SeenFindings.was_shown(key, fingerprint, window_s)       the same question, without recording
        (order-select records what it showed; order-sign only asks, so a re-sign is screened afresh)
    ReplayCache.add_if_new(jti_key, ttl_s)                   "jti not seen before"
        True  -> first time: accept the token
        False -> seen before (on any worker or replica sharing the backend): reject it

    backend        shared by                      chosen by make_shared_state when
    in-process     the threads of one process     nothing else applies (one worker, SQLite)
    Redis          every worker and replica       Settings.redis_url is set (SET key value NX PX)
    database       every worker and replica       a Store is given and several workers may run, or
                                                  the database is a server (PostgreSQL)

Failure policy differs on purpose. If the shared backend is down during a call, SeenFindings answers
"not shown" (show the card again: a repeated card is an annoyance, a suppressed one could be a missed
warning), while ReplayCache raises :class:`SharedStateUnavailable` (a 500 for that call: never accept a
token we could not check).

Keys should be built from hashed identifiers (``cds.storage.store.patient_hash``); backends hash them again so
that key length is bounded.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import redis
import sqlalchemy as sa
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from cds.config import Settings
from cds.errors import CdsError, ConfigError
from cds.storage.store import Store

__all__ = [
    "DatabaseReplayCache",
    "DatabaseSeenFindings",
    "InProcessReplayCache",
    "InProcessSeenFindings",
    "RedisReplayCache",
    "RedisSeenFindings",
    "ReplayCache",
    "SeenFindings",
    "SharedStateUnavailable",
    "connect_redis",
    "make_shared_state",
    "redis_client",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "ketamine-cds:"
_REDIS_TIMEOUT_S = 2.0
_PRUNE_EVERY = 1024  # in-process maps drop expired entries every this many writes


class SharedStateUnavailable(CdsError):
    """The shared backend (Redis or the database) could not be reached during a call."""


@runtime_checkable
class SeenFindings(Protocol):
    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        """True (and record it) unless (key, fingerprint) was shown within the last `window_s` seconds.

        `window_s` <= 0 disables suppression: always True, nothing recorded.
        """
        ...

    def record_shown(self, items: Sequence[tuple[str, str]], window_s: int) -> None:
        """Record several (key, fingerprint) pairs as shown, in one round trip or transaction."""
        ...

    def was_shown(self, key: str, fingerprint: str, window_s: int) -> bool:
        """True when (key, fingerprint) was recorded by `first_showing` and its window has not ended.

        Records nothing. The window is the one given when the finding was recorded; `window_s` <= 0 means
        suppression is off: always False.
        """
        ...


@runtime_checkable
class ReplayCache(Protocol):
    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        """True (and remember it for `ttl_s` seconds) if `jti_key` was not seen; False if it was."""
        ...


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# In-process
# --------------------------------------------------------------------------------------------------


class _ExpiringSet:
    """A thread-safe set whose members expire; `clock` is monotonic seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def contains(self, member: str) -> bool:
        with self._lock:
            expires = self._expiry.get(member)
            return expires is not None and expires > self._clock()

    def add_if_absent(self, member: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            expires = self._expiry.get(member)
            if expires is not None and expires > now:
                return False
            self._expiry[member] = now + ttl_s
            self._writes += 1
            if self._writes % _PRUNE_EVERY == 0:
                self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            return True

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for v in self._expiry.values() if v > now)


class InProcessSeenFindings:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._set = _ExpiringSet(clock)

    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return True
        return self._set.add_if_absent(_digest(key, fingerprint), window_s)

    def record_shown(self, items: Sequence[tuple[str, str]], window_s: int) -> None:
        for key, fingerprint in items:
            self.first_showing(key, fingerprint, window_s)

    def was_shown(self, key: str, fingerprint: str, window_s: int) -> bool:
        return window_s > 0 and self._set.contains(_digest(key, fingerprint))


class InProcessReplayCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._set = _ExpiringSet(clock)

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        return self._set.add_if_absent(_digest(jti_key), max(ttl_s, 1))


# --------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------


def _redis_set_nx(client: redis.Redis, key: str, ttl_s: float) -> bool:
    """SET key 1 NX PX ttl: True when the key did not exist (atomic across all clients)."""
    return bool(client.set(key, b"1", nx=True, px=max(int(ttl_s * 1000), 1)))


class RedisSeenFindings:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix + "seen:"

    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return True
        try:
            return _redis_set_nx(self._client, self._prefix + _digest(key, fingerprint), window_s)
        except redis.RedisError as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return True

    def record_shown(self, items: Sequence[tuple[str, str]], window_s: int) -> None:
        if window_s <= 0 or not items:
            return
        try:
            pipeline = self._client.pipeline(transaction=False)
            for key, fingerprint in items:
                pipeline.set(self._prefix + _digest(key, fingerprint), b"1", nx=True, ex=window_s)
            pipeline.execute()
        except redis.RedisError as exc:
            log.warning("repeat suppression unavailable: %s", type(exc).__name__)

    def was_shown(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return False
        try:
            return bool(self._client.exists(self._prefix + _digest(key, fingerprint)))
        except redis.RedisError as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return False


class RedisReplayCache:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix + "jti:"

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        try:
            return _redis_set_nx(self._client, self._prefix + _digest(jti_key), max(ttl_s, 1))
        except redis.RedisError as exc:
            raise SharedStateUnavailable(f"replay cache unavailable: {type(exc).__name__}") from exc


# --------------------------------------------------------------------------------------------------
# Database (the store's shared_marker table)
# --------------------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DatabaseSeenFindings:
    def __init__(self, store: Store, clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._clock = clock

    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return True
        try:
            return self._store.claim_marker("seen", _digest(key, fingerprint), window_s, self._clock())
        except sa.exc.SQLAlchemyError as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return True

    def record_shown(self, items: Sequence[tuple[str, str]], window_s: int) -> None:
        if window_s <= 0 or not items:
            return
        markers = [_digest(key, fingerprint) for key, fingerprint in items]
        try:
            self._store.record_markers("seen", markers, window_s, self._clock())
        except sa.exc.SQLAlchemyError as exc:
            log.warning("repeat suppression unavailable: %s", type(exc).__name__)

    def was_shown(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return False
        try:
            return self._store.marker_active("seen", _digest(key, fingerprint), self._clock())
        except sa.exc.SQLAlchemyError as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return False


class DatabaseReplayCache:
    def __init__(self, store: Store, clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._clock = clock

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        try:
            return self._store.claim_marker("jti", _digest(jti_key), max(ttl_s, 1), self._clock())
        except sa.exc.SQLAlchemyError as exc:
            raise SharedStateUnavailable(f"replay cache unavailable: {type(exc).__name__}") from exc


# --------------------------------------------------------------------------------------------------
# Choosing a backend
# --------------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def redis_client(url: str) -> redis.Redis:
    """A Redis client for `url` with short timeouts and a single quick retry: a Redis outage must cost a
    call a few seconds at most, never the default exponential back-off."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=_REDIS_TIMEOUT_S,
        socket_timeout=_REDIS_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    )


def connect_redis(url: str) -> redis.Redis:
    """`redis_client(url)`, checked with PING. Raises ConfigError when Redis cannot be reached."""
    try:
        client = redis_client(url)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(
            f"KETAMINE_CDS_REDIS_URL: cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: {exc}"
        ) from exc
    return client


def make_shared_state(
    settings: Settings, store: Store | None = None, *, prefix: str = DEFAULT_PREFIX
) -> tuple[SeenFindings, ReplayCache]:
    """Pick the backend for this deployment (see the module docstring). Call once at start-up.

    Redis when ``settings.redis_url`` is set (and reachable: otherwise ConfigError, start-up stops);
    else the database when `store` is given and it is shared (PostgreSQL) or ``settings.workers`` > 1;
    else in-process.
    """
    if settings.redis_url:
        client = connect_redis(settings.redis_url)
        return RedisSeenFindings(client, prefix), RedisReplayCache(client, prefix)
    if store is not None and (not store.is_sqlite or settings.workers > 1):
        return DatabaseSeenFindings(store), DatabaseReplayCache(store)
    return InProcessSeenFindings(), InProcessReplayCache()

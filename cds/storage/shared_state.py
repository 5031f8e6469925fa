"""What workers and replicas must agree on between calls: cards already shown, and JWT ids already seen.

Two small interfaces, each with interchangeable backends:

    SeenFindings.first_showing(key, fingerprint, window_s)   "no repeats across hooks"
        True  -> not shown within the window: show it (and it is now recorded as shown)
        False -> shown within the window with the same evidence: suppress it
    SeenFindings.was_shown(key, fingerprint, window_s)       the same question, without recording
        (order-select records what it showed; order-sign only asks, so a re-sign is screened afresh)
    SeenFindings.record_shown([(key, fingerprint, card)])    order-select: these cards were shown
    SeenFindings.shown_cards(items, window_s)                 order-sign: the cards shown for them, or None
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
warning), while ReplayCache falls back to the database when Redis is down, and otherwise raises
:class:`SharedStateUnavailable` (a 503 with Retry-After: never accept a token we could not check, and
never tell the caller its credentials are wrong when they were not checked). Database calls made while a
caller waits go through a :class:`~cds.storage.guard.Guard` (a time limit and a breaker).

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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

from cds.config import Settings
from cds.errors import ServiceUnavailable
from cds.storage.guard import Guard
from cds.storage.store import Store

if TYPE_CHECKING:  # imported at run time only where Redis is configured (see make_shared_state)
    import redis

__all__ = [
    "DatabaseReplayCache",
    "DatabaseSeenFindings",
    "FallbackReplayCache",
    "InProcessReplayCache",
    "InProcessSeenFindings",
    "ReplayCache",
    "SeenFindings",
    "SharedStateUnavailable",
    "make_shared_state",
    "redact_url",
    "redis_for_readiness",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "ketamine-cds:"
_PRUNE_EVERY = 1024  # in-process maps drop expired entries every this many writes


class SharedStateUnavailable(ServiceUnavailable):
    """The shared backend (Redis or the database) could not be reached during a call."""


@runtime_checkable
class SeenFindings(Protocol):
    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        """True (and record it) unless (key, fingerprint) was shown within the last `window_s` seconds.

        `window_s` <= 0 disables suppression: always True, nothing recorded.
        """
        ...

    def record_shown(self, items: Sequence[tuple[str, str, str]], window_s: int) -> None:
        """Record several (key, fingerprint, card uuid) as shown, in one round trip or transaction; a
        later showing of the same (key, fingerprint) replaces the card and restarts the window."""
        ...

    def shown_cards(self, items: Sequence[tuple[str, str]], window_s: int) -> list[str | None]:
        """For each (key, fingerprint), in one round trip: the card uuid recorded for it within its window
        ("" if none was recorded with it); None when it was not shown, the window ended, suppression is
        off, or the backend is down."""
        ...

    def was_shown(self, key: str, fingerprint: str, window_s: int) -> bool:
        """True when (key, fingerprint) was recorded by `first_showing` and its window has not ended.

        Records nothing. The window is the one given when the finding was recorded; `window_s` <= 0 means
        suppression is off: always False. Every backend answers it from `shown_cards`.
        """
        return self.shown_cards([(key, fingerprint)], window_s)[0] is not None


@runtime_checkable
class ReplayCache(Protocol):
    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        """True (and remember it for `ttl_s` seconds) if `jti_key` was not seen; False if it was."""
        ...


def _ignore(_backend: str) -> None:
    return None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# In-process
# --------------------------------------------------------------------------------------------------


class _ExpiringSet:
    """A thread-safe set whose members expire and may carry a value; `clock` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._expiry: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def contains(self, member: str) -> bool:
        return self.value(member) is not None

    def value(self, member: str) -> str | None:
        with self._lock:
            expires, value = self._expiry.get(member, (0.0, ""))
            return value if expires > self._clock() else None

    def add_if_absent(self, member: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            expires, _ = self._expiry.get(member, (0.0, ""))
            if expires > now:
                return False
            self._set(member, now + ttl_s, "", now)
            return True

    def put(self, member: str, ttl_s: float, value: str) -> None:
        with self._lock:
            now = self._clock()
            self._set(member, now + ttl_s, value, now)

    def _set(self, member: str, expires: float, value: str, now: float) -> None:
        self._expiry[member] = (expires, value)
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self._expiry = {k: v for k, v in self._expiry.items() if v[0] > now}

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for expires, _ in self._expiry.values() if expires > now)


class InProcessSeenFindings(SeenFindings):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._set = _ExpiringSet(clock)

    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return True
        return self._set.add_if_absent(_digest(key, fingerprint), window_s)

    def record_shown(self, items: Sequence[tuple[str, str, str]], window_s: int) -> None:
        if window_s <= 0:
            return
        for key, fingerprint, card in items:
            self._set.put(_digest(key, fingerprint), window_s, card)

    def shown_cards(self, items: Sequence[tuple[str, str]], window_s: int) -> list[str | None]:
        if window_s <= 0:
            return [None] * len(items)
        return [self._set.value(_digest(key, fingerprint)) for key, fingerprint in items]


class InProcessReplayCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._set = _ExpiringSet(clock)

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        return self._set.add_if_absent(_digest(jti_key), max(ttl_s, 1))


# --------------------------------------------------------------------------------------------------
# Database (the store's shared_marker table)
# --------------------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _unguarded(fn: Callable[[], T]) -> T:
    return fn()


class _DatabaseBacked:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime] = _utc_now,
        guard: Guard | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._run: Callable[[Callable[[], Any]], Any] = guard.call if guard is not None else _unguarded
        self._on_error = on_error or _ignore


class DatabaseSeenFindings(_DatabaseBacked, SeenFindings):
    def first_showing(self, key: str, fingerprint: str, window_s: int) -> bool:
        if window_s <= 0:
            return True
        marker, now = _digest(key, fingerprint), self._clock()
        try:
            return bool(self._run(lambda: self._store.claim_marker("seen", marker, window_s, now)))
        except (sa.exc.SQLAlchemyError, ServiceUnavailable) as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return True

    def record_shown(self, items: Sequence[tuple[str, str, str]], window_s: int) -> None:
        if window_s <= 0 or not items:
            return
        markers = [_digest(key, fingerprint) for key, fingerprint, _ in items]
        cards = [card for _, _, card in items]
        now = self._clock()
        try:
            self._run(lambda: self._store.record_markers("seen", markers, window_s, now, cards))
        except (sa.exc.SQLAlchemyError, ServiceUnavailable) as exc:
            log.warning("repeat suppression unavailable: %s", type(exc).__name__)

    def shown_cards(self, items: Sequence[tuple[str, str]], window_s: int) -> list[str | None]:
        if window_s <= 0 or not items:
            return [None] * len(items)
        markers, now = [_digest(key, fingerprint) for key, fingerprint in items], self._clock()
        try:
            cards: list[str | None] = self._run(lambda: self._store.marker_values("seen", markers, now))
        except (sa.exc.SQLAlchemyError, ServiceUnavailable) as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return [None] * len(items)
        return cards


class DatabaseReplayCache(_DatabaseBacked):
    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        marker, now = _digest(jti_key), self._clock()
        try:
            return bool(self._run(lambda: self._store.claim_marker("jti", marker, max(ttl_s, 1), now)))
        except (sa.exc.SQLAlchemyError, ServiceUnavailable) as exc:
            self._on_error("database")
            raise SharedStateUnavailable(f"replay cache unavailable: {type(exc).__name__}") from exc


class FallbackReplayCache:
    """Redis first; while Redis is down, the database (a token is still checked, never waved through).

    A jti first seen in Redis before the outage is not in the database, so a replay within the outage
    could pass: the window is the outage's length, against refusing every call meanwhile.
    """

    def __init__(
        self, primary: ReplayCache, fallback: ReplayCache | None, on_error: Callable[[str], None] = _ignore
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._on_error = on_error

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        try:
            return self.primary.add_if_new(jti_key, ttl_s)
        except SharedStateUnavailable:
            self._on_error("redis")
            if self.fallback is None:
                raise
        return self.fallback.add_if_new(jti_key, ttl_s)  # counts its own failures


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


def make_shared_state(
    settings: Settings,
    store: Store | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    guard: Guard | None = None,
    check: bool = True,
    on_error: Callable[[str], None] = _ignore,
) -> tuple[SeenFindings, ReplayCache]:
    """Pick the backend for this deployment (see the module docstring). Call once at start-up.

    Redis when ``settings.redis_url`` is set (and, with `check`, reachable: otherwise ConfigError, start-up
    stops; serving workers skip the check so a worker restarted during an outage still comes up), with
    the database as the replay cache's fallback when there is one; else the database when `store` is given
    and it is shared (PostgreSQL) or ``settings.workers`` > 1; else in-process. `guard` bounds the
    database calls; `on_error` hears of every replay-cache failure, by backend.
    """
    if settings.redis_url:
        # imported here: the redis package costs every worker ~6 MB, and most sites run without Redis
        from cds.storage.redis_state import (  # noqa: PLC0415
            RedisReplayCache,
            RedisSeenFindings,
            connect_redis,
        )

        client = connect_redis(settings.redis_url, settings.redis_timeout_s, check=check)
        fallback = DatabaseReplayCache(store, guard=guard, on_error=on_error) if store is not None else None
        replay = FallbackReplayCache(RedisReplayCache(client, prefix), fallback, on_error)
        return RedisSeenFindings(client, prefix), replay
    if store is not None and (not store.is_sqlite or settings.workers > 1):
        return DatabaseSeenFindings(store, guard=guard), DatabaseReplayCache(
            store, guard=guard, on_error=on_error
        )
    return InProcessSeenFindings(), InProcessReplayCache()


def redis_for_readiness(settings: Settings) -> redis.Redis | None:
    """A client for the readiness probe's PING, or None where Redis is not configured."""
    if not settings.redis_url:
        return None
    from cds.storage.redis_state import redis_client  # noqa: PLC0415  (as in make_shared_state)

    return redis_client(settings.redis_url, settings.redis_timeout_s)

"""The Redis backends of :mod:`cds.storage.shared_state` (SET key value NX PX), and the Redis client.

A module of its own so that the redis package is imported only by deployments that configure Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from cds.errors import ConfigError
from cds.storage.shared_state import DEFAULT_PREFIX, SeenFindings, SharedStateUnavailable, _digest, redact_url

__all__ = ["RedisReplayCache", "RedisSeenFindings", "connect_redis", "redis_client"]

log = logging.getLogger("cds.storage.shared_state")
_REDIS_TIMEOUT_S = 1.0


def _redis_set_nx(client: redis.Redis, key: str, ttl_s: float) -> bool:
    """SET key 1 NX PX ttl: True when the key did not exist (atomic across all clients)."""
    return bool(client.set(key, b"1", nx=True, px=max(int(ttl_s * 1000), 1)))


class RedisSeenFindings(SeenFindings):
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

    def record_shown(self, items: Sequence[tuple[str, str, str]], window_s: int) -> None:
        if window_s <= 0 or not items:
            return
        try:
            pipeline = self._client.pipeline(transaction=False)
            for key, fingerprint, card in items:
                pipeline.set(self._prefix + _digest(key, fingerprint), card.encode("utf-8"), ex=window_s)
            pipeline.execute()
        except redis.RedisError as exc:
            log.warning("repeat suppression unavailable: %s", type(exc).__name__)

    def shown_cards(self, items: Sequence[tuple[str, str]], window_s: int) -> list[str | None]:
        if window_s <= 0 or not items:
            return [None] * len(items)
        try:
            values = self._client.mget([self._prefix + _digest(key, print_) for key, print_ in items])
        except redis.RedisError as exc:
            log.warning("repeat suppression unavailable, showing the card: %s", type(exc).__name__)
            return [None] * len(items)
        return [_card_of(value) for value in values]


def _card_of(value: Any) -> str | None:
    if value is None:
        return None
    card = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return "" if card == "1" else card  # "1": set by first_showing, which records no card


class RedisReplayCache:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix + "jti:"

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        try:
            return _redis_set_nx(self._client, self._prefix + _digest(jti_key), max(ttl_s, 1))
        except redis.RedisError as exc:
            raise SharedStateUnavailable(f"replay cache unavailable: {type(exc).__name__}") from exc


def redis_client(url: str, timeout_s: float = _REDIS_TIMEOUT_S) -> redis.Redis:
    """A Redis client for `url` with short timeouts and a single quick retry: a Redis outage must cost a
    call a few seconds at most, never the default exponential back-off."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    )


def connect_redis(url: str, timeout_s: float = _REDIS_TIMEOUT_S, *, check: bool = True) -> redis.Redis:
    """`redis_client(url)`, checked with PING unless `check` is false. Raises ConfigError when Redis cannot
    be reached (start-up stops with the URL, password hidden)."""
    try:
        client = redis_client(url, timeout_s)
        if check:
            client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(
            f"KETAMINE_CDS_REDIS_URL: cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: {exc}"
        ) from exc
    return client

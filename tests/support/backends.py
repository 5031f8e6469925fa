"""Real PostgreSQL and Redis for tests, when they are running; isolated per test so parallel runs don't clash.

    postgres_url_or_skip()   base URL of a reachable PostgreSQL (skip, or fail when CI=true)
    redis_url_or_skip()      URL of a reachable Redis (skip, or fail when CI=true)
    fresh_postgres_schema()  context manager: a URL whose search_path is a new schema, dropped on exit
    redis_prefix(url)        context manager: a unique key prefix, its keys deleted on exit

Addresses come from KETAMINE_CDS_TEST_POSTGRES_URL / KETAMINE_CDS_TEST_REDIS_URL, defaulting to the
machine's services (PostgreSQL 127.0.0.1:5432 database `test` with trust auth, Redis 127.0.0.1:6379).
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
import redis

POSTGRES_URL = os.environ.get("KETAMINE_CDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KETAMINE_CDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(what: str, url: str, error: str) -> None:
    message = f"{what} at {url} is not reachable ({error})"
    if _in_ci():
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


@functools.cache
def _postgres_error(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


@functools.cache
def _redis_error(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def postgres_url_or_skip() -> str:
    error = _postgres_error(POSTGRES_URL)
    if error is not None:
        _unavailable("PostgreSQL", POSTGRES_URL, error)
    return POSTGRES_URL


def redis_url_or_skip() -> str:
    error = _redis_error(REDIS_URL)
    if error is not None:
        _unavailable("Redis", REDIS_URL, error)
    return REDIS_URL


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A SQLAlchemy-ready URL (plain ``postgresql://``) whose connections use a new, empty schema."""
    base = postgres_url_or_skip()
    schema = f"kcds_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A key prefix no other test run uses; every key under it is deleted afterwards."""
    prefix = f"kcds-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

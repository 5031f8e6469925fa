"""Typed, frozen settings: defaults, then KETAMINE_CDS_* environment variables, then explicit overrides.

Validated once at start-up (`load_settings`), never per request: a bad value stops the service with a
message naming the variable. Technical settings live here; clinical site policy (thresholds, windows,
tiers) lives in the policy file that `policy_file` points to and is validated with the rules.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds.errors import ConfigError

ENV_PREFIX = "KETAMINE_CDS_"
# Variables under the prefix that the test suite and CI read; the service itself never does.
_TOOLING_VARIABLES = ("TEST_", "CI_", "FUZZ_", "CONTAINER_TESTS")
# A key the patient pseudonyms are derived from: anything shorter is guessable offline.
MIN_AUDIT_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """A CDS client (EHR) we accept JWTs from. Exactly one of `jwks_url` / `jwks_file`."""

    iss: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    jku_allowlist: tuple[str, ...] = ()  # JWKS URLs a token's `jku` header may name
    tenant: str | None = None  # when set, the token's `tenant` claim must equal it
    # FHIR base URLs (prefixes) this issuer's calls may name as fhirServer; none: prefetch only
    fhir_servers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    dev_mode: bool = False
    public_base_url: str | None = None  # e.g. https://cds.example.org ; the JWT `aud` is computed from it
    smart_app_registered: bool = (
        False  # the EHR registered this service as a SMART app: page links are `smart`
    )
    # request limits
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    max_resources: int = 20_000
    # large request bodies (1 MiB and over) one worker screens at once, by size (cds/web/admission.py)
    max_inflight_body_bytes: int = 6 * 1024 * 1024
    request_time_budget_s: float = 8.0
    # outbound FHIR
    fhir_connect_timeout_s: float = 2.0
    fhir_read_timeout_s: float = 5.0
    fhir_time_budget_s: float = 4.0
    fhir_max_pages: int = 100
    fhir_max_bytes: int = 64 * 1024 * 1024
    # entries asked for per page of a fallback search; a server that caps `_count` returns fewer and a next
    # link. Fewer, larger pages: against the local test server, 638 Conditions took 32 ms as one page of
    # 1,000 and 45-50 ms as four of 200 (each page costs the server a query of its own)
    fhir_page_size: int = 1000
    fhir_allow_http: bool = False  # plain-http fhirServer; forced on in dev mode
    fhir_server_allowlist: tuple[str, ...] = ()  # http(s) base URLs allowed even when not https
    # FHIR base URLs (prefixes) read without fhirAuthorization; never implied by any other setting
    open_fhir_servers: tuple[str, ...] = ()
    # IP networks outbound connections may reach although not public (loopback, RFC 1918...); production
    private_network_allowlist: tuple[str, ...] = ()
    # browser clients
    cors_origins: tuple[str, ...] = ()
    # persistence and shared state
    database_url: str = "sqlite:///ketamine-cds.sqlite3"
    redis_url: str | None = None
    # storage time limits: a call never waits longer than `storage_wait_s` on the database or Redis
    db_connect_timeout_s: float = 3.0
    db_statement_timeout_s: float = 5.0
    redis_timeout_s: float = 1.0
    storage_wait_s: float = 2.0
    # durable outbox for issued-card, audit and (during a database outage) feedback records
    outbox_dir: str = "ketamine-cds-outbox"
    outbox_interval_s: float = 0.2
    outbox_max_backoff_s: float = 30.0
    # serving: writable scratch space (temp files, worker heartbeats, metrics) and the SIGTERM drain period
    work_dir: str = "/tmp"  # noqa: S108 -- the documented default; an emptyDir under a read-only root
    drain_s: float = 5.0
    # glibc malloc arenas per process (0: the C library's default, 8 per core); see cds/web/serving.py
    malloc_arena_max: int = 2
    audit_retention_days: int = 365
    repeat_suppression_s: int = 3600  # 0 disables "no repeats across hooks"
    # client authentication
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    jwt_leeway_s: int = 30
    jwt_max_lifetime_s: int = 3600
    jwks_timeout_s: float = 3.0
    jwks_cache_s: int = 3600
    # audit: patient ids are logged only as an HMAC with this key; unset, one key is generated and kept in
    # the database on first start (the same for every replica sharing it)
    audit_hash_key: str | None = None
    # clinical site policy (YAML); None means the evidence defaults shipped with the rules
    policy_file: str | None = None
    # the pre-session worklist's configuration file (docs/worklist.md); when set, GET /worklist serves it
    worklist_config: str | None = None
    log_level: str = "INFO"
    workers: int = 2


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be true or false, got {raw!r}")


_ISSUER_VAR = f"{ENV_PREFIX}TRUSTED_ISSUERS"
_ISSUER_LISTS = ("jku_allowlist", "fhir_servers")
_ISSUER_TEXTS = ("iss", "jwks_url", "jwks_file", "tenant")
ISSUER_KEYS = frozenset(_ISSUER_TEXTS + _ISSUER_LISTS)


def _parse_issuers(raw: str) -> tuple[TrustedIssuer, ...]:
    """Issuers come as JSON: inline, or `@/path/to/file.json`. Strict: a misspelt key protects nothing."""
    try:
        text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
        data = json.loads(text)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{_ISSUER_VAR} is not readable JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{_ISSUER_VAR} must be a JSON list of issuers")
    return tuple(_parse_issuer(index, item) for index, item in enumerate(data, start=1))


def _issuer_label(index: int, item: object) -> str:
    iss = item.get("iss") if isinstance(item, dict) else None
    if isinstance(iss, str) and iss:
        return f"{_ISSUER_VAR}: issuer {iss!r}"
    return f"{_ISSUER_VAR}: entry {index}"


def _parse_issuer(index: int, item: object) -> TrustedIssuer:
    where = _issuer_label(index, item)
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a JSON object")
    for key in item:
        if key not in ISSUER_KEYS:
            close = difflib.get_close_matches(str(key), sorted(ISSUER_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint}; the keys are {', '.join(sorted(ISSUER_KEYS))}"
            )
    if not isinstance(item.get("iss"), str) or not item["iss"]:
        raise ConfigError(f"{where}: key 'iss' is required and must be a string")
    for key in _ISSUER_TEXTS:
        if key in item and not isinstance(item[key], str):
            raise ConfigError(f"{where}: key {key!r} must be a string")
    for key in _ISSUER_LISTS:
        value = item.get(key, [])
        if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
            raise ConfigError(f"{where}: key {key!r} must be a list of URL strings")
    return TrustedIssuer(
        iss=item["iss"],
        jwks_url=item.get("jwks_url"),
        jwks_file=item.get("jwks_file"),
        jku_allowlist=tuple(item.get("jku_allowlist", ())),
        tenant=item.get("tenant"),
        fhir_servers=tuple(item.get("fhir_servers", ())),
    )


def _coerce(name: str, current: Any, raw: str) -> Any:
    if name == "trusted_issuers":
        return _parse_issuers(raw)
    if name == "audit_hash_key":
        return raw  # an empty key is refused by validation, not read as "unset"
    if isinstance(current, bool):
        return _parse_bool(name, raw)
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a whole number, got {raw!r}") from exc
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from exc
    if isinstance(current, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw or None if current is None else raw


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults -> environment -> overrides, then validation. Raises ConfigError with the variable's name."""
    env = os.environ if environ is None else environ
    _refuse_unknown_variables(env)
    settings = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _coerce(f.name, getattr(settings, f.name), raw)
    values.update(overrides or {})
    unknown = set(values) - {f.name for f in fields(Settings)}
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = replace(settings, **values)
    validate(settings)
    return settings


def _refuse_unknown_variables(env: Mapping[str, str]) -> None:
    """A misspelt variable would otherwise be ignored and its default silently used (a replica on its own
    SQLite file instead of the shared database, say): stop and name the closest known variable."""
    known = [ENV_PREFIX + f.name.upper() for f in fields(Settings)]
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        if name[len(ENV_PREFIX) :].startswith(_TOOLING_VARIABLES):
            continue
        # compared without the prefix, which every name shares and which would make anything look close
        suffixes = [known_name[len(ENV_PREFIX) :] for known_name in known]
        close = difflib.get_close_matches(name[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.75)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        raise ConfigError(f"{name} is not a setting of this service{hint}")


def _check_url(name: str, value: str) -> None:
    _check_url_of(f"{ENV_PREFIX}{name.upper()}", value)


def http_allowed(url: str, settings: Settings) -> bool:
    """May this FHIR base URL be plain http? Dev mode, FHIR_ALLOW_HTTP, or listed in FHIR_SERVER_ALLOWLIST."""
    if settings.dev_mode or settings.fhir_allow_http:
        return True
    mine = _base_key(url)
    return mine is not None and any(_base_key(allowed) == mine for allowed in settings.fhir_server_allowlist)


def _base_key(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port or default, parts.path.rstrip("/")


def _check_fhir_base(where: str, url: object, settings: Settings) -> None:
    """A FHIR base URL the operator lists: absolute https (http only where explicitly allowed), no extras.

    `where` names the setting (and entry) for the message.
    """
    if not isinstance(url, str):
        raise ConfigError(f"{where}: {url!r} must be a URL string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{where}: {url!r} is not a valid URL") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} must be an absolute https URL")
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: {url!r} must not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not http_allowed(url, settings):
        raise ConfigError(
            f"{where}: {url!r} is plain http; allow it explicitly with "
            f"{ENV_PREFIX}FHIR_SERVER_ALLOWLIST (or {ENV_PREFIX}FHIR_ALLOW_HTTP)"
        )


def _check_issuer(issuer: TrustedIssuer, settings: Settings) -> None:
    where = f"{_ISSUER_VAR}: issuer {issuer.iss!r}"
    parts = urlsplit(issuer.iss)
    if parts.scheme != "https" or not parts.netloc:
        raise ConfigError(f"{where}: key 'iss' must be an https URL (the token's iss claim, exactly)")
    if (issuer.jwks_url is None) == (issuer.jwks_file is None):
        raise ConfigError(f"{where}: needs exactly one of the keys 'jwks_url' or 'jwks_file'")
    if issuer.jwks_url:
        _check_url_of(f"{where}, key 'jwks_url'", issuer.jwks_url)
    if issuer.jwks_file and issuer.jku_allowlist:
        raise ConfigError(
            f"{where}: key 'jku_allowlist' has no effect with 'jwks_file' (pinned keys: a token's jku is "
            "never fetched); remove it, or use 'jwks_url'"
        )
    for url in issuer.jku_allowlist:
        _check_url_of(f"{where}, key 'jku_allowlist'", url)
    if issuer.tenant is not None and not issuer.tenant:
        raise ConfigError(f"{where}: key 'tenant' must not be empty (leave it out instead)")
    for url in issuer.fhir_servers:
        _check_fhir_base(f"{where}, key 'fhir_servers'", url, settings)


def _check_url_of(where: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{where} must be an absolute http(s) URL, got {value!r}")


_MAX_MALLOC_ARENAS = 1024


def validate(settings: Settings) -> None:
    for setting in fields(settings):
        value = getattr(settings, setting.name)
        # nan and inf parse as floats and pass every comparison below: a drain of nan seconds never ends
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{ENV_PREFIX}{setting.name.upper()} must be a finite number, got {value!r}")
    positive = (
        "max_body_bytes",
        "max_json_depth",
        "max_resources",
        "max_inflight_body_bytes",
        "request_time_budget_s",
        "fhir_connect_timeout_s",
        "fhir_read_timeout_s",
        "fhir_time_budget_s",
        "fhir_max_pages",
        "fhir_max_bytes",
        "fhir_page_size",
        "jwks_timeout_s",
        "workers",
        "db_connect_timeout_s",
        "db_statement_timeout_s",
        "redis_timeout_s",
        "storage_wait_s",
        "outbox_interval_s",
        "outbox_max_backoff_s",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be greater than zero")
    for name in (
        "audit_retention_days",
        "repeat_suppression_s",
        "jwt_leeway_s",
        "drain_s",
        "malloc_arena_max",
    ):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must not be negative")
    if settings.malloc_arena_max > _MAX_MALLOC_ARENAS:
        raise ConfigError(f"{ENV_PREFIX}MALLOC_ARENA_MAX must be at most {_MAX_MALLOC_ARENAS}")
    if settings.public_base_url:
        _check_url("public_base_url", settings.public_base_url)
    for url in settings.fhir_server_allowlist:
        _check_url("fhir_server_allowlist", url)
    for entry in settings.private_network_allowlist:
        try:
            ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            raise ConfigError(
                f"{ENV_PREFIX}PRIVATE_NETWORK_ALLOWLIST: {entry!r} is not an IP address or network ({exc})"
            ) from None
    for url in settings.open_fhir_servers:
        _check_fhir_base(f"{ENV_PREFIX}OPEN_FHIR_SERVERS", url, settings)
    if settings.redis_url and urlsplit(settings.redis_url).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"{ENV_PREFIX}REDIS_URL must be a redis:// or rediss:// URL")
    for issuer in settings.trusted_issuers:
        _check_issuer(issuer, settings)
    _check_audit_key(settings)
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    if not settings.dev_mode:
        if not settings.trusted_issuers:
            raise ConfigError(
                "production mode needs at least one trusted issuer: set "
                f"{ENV_PREFIX}TRUSTED_ISSUERS (see README), or run with --dev for local development"
            )
        if not settings.public_base_url:
            raise ConfigError(
                f"production mode needs {ENV_PREFIX}PUBLIC_BASE_URL: the JWT audience is computed from it"
            )


def _check_audit_key(settings: Settings) -> None:
    """The pseudonym key: never empty, long enough in production, and the same on every replica."""
    key = settings.audit_hash_key
    name = f"{ENV_PREFIX}AUDIT_HASH_KEY"
    if key is None:
        if settings.redis_url and settings.database_url.startswith("sqlite"):
            # Redis is shared but each replica has its own database: a generated key would differ per
            # replica, and so would patient hashes and repeat suppression
            raise ConfigError(
                f"{name} must be set when Redis is shared and the database is a local SQLite file "
                f"(at least {MIN_AUDIT_KEY_BYTES} bytes, the same on every replica)"
            )
        return
    if not key.strip():
        raise ConfigError(f"{name} is empty: unset it to have one generated, or give a secret key")
    if not settings.dev_mode and len(key.encode("utf-8")) < MIN_AUDIT_KEY_BYTES:
        raise ConfigError(
            f"{name} is {len(key.encode('utf-8'))} bytes: production needs at least {MIN_AUDIT_KEY_BYTES}"
        )

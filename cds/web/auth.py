"""Client authentication: the CDS client's (EHR's) Bearer JWT, per CDS Hooks 2.0 and its best practices.

Every call (discovery, service, feedback) carries `Authorization: Bearer <JWT>`. `ClientAuthenticator.verify`
accepts it only if all of the following hold, in this order:

1. the header is `Bearer <compact JWS>` and not absurdly long;
2. the JOSE header names an asymmetric `alg` from `ALLOWED_ALGORITHMS` (`none` and every HS* are refused
   here, before any key is looked up, so a token "signed" with the public key as an HMAC secret never gets
   near a key), `typ` is `JWT`, `kid` is present, and there is no `crit`/`b64` extension;
3. the (still unverified) `iss` is one of the configured trusted issuers;
4. the key set is the issuer's `jwks_file` when it has one (pinned keys: a `jku` header is then ignored,
   never fetched); otherwise its `jwks_url`, or the token's `jku` header when that URL is in the issuer's
   `jku_allowlist` (or equals its `jwks_url`); any other `jku` is refused and never fetched;
5. the `kid` is in that key set (cached per source for `jwks_cache_s`; an unknown `kid` forces one refresh,
   but no source is fetched more than once per `JWKS_MIN_REFETCH_S`, so a flood of made-up kids cannot
   hammer the EHR), and the key's type (and curve) fits `alg`;
6. the signature verifies (PyJWT, with exactly that one algorithm allowed);
7. `aud` (a string or a list) contains the exact URL called, `exp` and `iat` are present, `exp` has not
   passed, `iat` (and `nbf`, if sent) is not in the future, each with `jwt_leeway_s`, and the token does not
   live longer than `jwt_max_lifetime_s`;
8. `tenant` equals the issuer's configured tenant, when one is configured;
9. `jti` was not seen before for this issuer (the replay cache keeps it for the rest of the token's life
   plus the leeway; shared through Redis when configured, so every worker and replica sees it).

Any failure raises `Unauthorized("unauthorized")`: the same bare word whatever went wrong. The reason is
logged to `cds.web.auth` at WARNING with the token's `iss`, `kid` and `jti` only; never the token itself and
never any other claim.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds.config import Settings, TrustedIssuer
from cds.errors import ConfigError, OutboundRefused, ServiceUnavailable, Unauthorized
from cds.outbound import address_policy, outbound_session

__all__ = [
    "ALLOWED_ALGORITHMS",
    "JWKS_MIN_REFETCH_S",
    "ClientAuthenticator",
    "ReplayCacheLike",
    "VerifiedClient",
    "expected_audience",
]

log = logging.getLogger("cds.web.auth")

# Asymmetric algorithms only. ES384 and RS384 are the ones CDS Hooks recommends.
_EC_CURVES: Mapping[str, str] = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(_EC_CURVES) | _RSA_ALGORITHMS

JWKS_MIN_REFETCH_S = 10.0  # no JWKS source is fetched more often than this, whatever tokens arrive
_JWKS_MAX_BYTES = 256 * 1024
_JWKS_MAX_KEYS = 100
_MIN_RSA_BITS = 2048
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_JTI_CHARS = 255
_LOG_VALUE_CHARS = 128
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# JWS compact serialisation: three base64url segments; the signature may be empty (alg "none").
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_UNAUTHORIZED = "unauthorized"


class ReplayCacheLike(Protocol):
    """What we need from the replay cache (cds.storage.shared_state.ReplayCache fits it)."""

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        """Remember `jti_key` for `ttl_s` seconds; False if it was already there."""
        ...


@dataclass(frozen=True, slots=True)
class VerifiedClient:
    """Who called us, after every check passed. Safe to log (no token, no other claims)."""

    iss: str
    jti: str
    kid: str
    tenant: str | None


def expected_audience(public_base_url: str, path: str) -> str:
    """The exact URL of the endpoint called, which the JWT's `aud` must contain.

    Built from the configured public base URL (never from the Host header, which a proxy may rewrite or a
    caller may forge). Slashes where the two meet are normalised: `https://cds.example.org/` and
    `/cds-services/x` give `https://cds.example.org/cds-services/x`; a trailing slash on `path` is kept,
    since it is part of the URL the client called.
    """
    base = public_base_url.rstrip("/")
    rest = path.lstrip("/")
    return f"{base}/{rest}" if rest else base


class _Reject(Exception):
    """Internal: a token failed a check. `reason` is a short fixed identifier, never token content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _JwksError(Exception):
    """Internal: a key set could not be fetched, read or parsed."""


@dataclass(frozen=True, slots=True)
class _Source:
    kind: Literal["url", "file"]
    location: str


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any  # a cryptography public key object (EC or RSA)
    declared_alg: str | None  # the JWK's own `alg`, when it states one


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: Mapping[str, tuple[_Key, ...]]
    fetched_at: float


def _loggable(value: object) -> str:
    """A claim value fit for a log line: strings only, printable, bounded."""
    if not isinstance(value, str) or not value:
        return "-"
    cleaned = "".join(ch if ch.isprintable() and ch not in "\"'" else "?" for ch in value[:_LOG_VALUE_CHARS])
    return cleaned + ("..." if len(value) > _LOG_VALUE_CHARS else "")


def _number(value: object) -> float | None:
    """A finite JSON number as float; None for anything else (booleans, strings, NaN, missing)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _allows_plain_http(url: str, dev_mode: bool) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and (dev_mode or (parts.hostname or "") in _LOOPBACK_HOSTS)


def _parse_jwks(raw: bytes, fetched_at: float) -> _KeySet:
    """Keep the usable public signing keys of a JWKS, by kid. Anything unusable is skipped, not fatal."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _JwksError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise _JwksError("not a JWK Set (no 'keys' list)")
    by_kid: dict[str, list[_Key]] = {}
    for jwk_data in data["keys"][:_JWKS_MAX_KEYS]:
        if not isinstance(jwk_data, dict):
            continue
        kid = jwk_data.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        if jwk_data.get("kty") not in {"EC", "RSA"} or "d" in jwk_data:  # symmetric or private: never
            continue
        if jwk_data.get("use", "sig") != "sig":
            continue
        declared = jwk_data.get("alg")
        if declared is not None and declared not in ALLOWED_ALGORITHMS:
            continue
        try:
            public_key = jwt.PyJWK(jwk_data).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            continue
        by_kid.setdefault(kid, []).append(_Key(public_key, declared if isinstance(declared, str) else None))
    if not by_kid:
        raise _JwksError("no usable signing keys")
    return _KeySet({kid: tuple(keys) for kid, keys in by_kid.items()}, fetched_at)


def _fits(key: _Key, alg: str) -> bool:
    """Does this key belong with this algorithm (key type, curve, size, and the JWK's own `alg`)?"""
    if key.declared_alg is not None and key.declared_alg != alg:
        return False
    if alg in _EC_CURVES:
        return isinstance(key.key, ec.EllipticCurvePublicKey) and key.key.curve.name == _EC_CURVES[alg]
    if alg in _RSA_ALGORITHMS:
        return isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size >= _MIN_RSA_BITS
    return False


class _JwksCache:
    """Key sets by source, refreshed on expiry or on an unknown kid, never more than once per interval.

    Thread-safe: one lock per source serialises fetching, so concurrent requests wait for one fetch
    instead of each starting their own. When a refresh fails, the keys already held are used for at most
    one more cache period (an EHR's JWKS endpoint hiccup should not take every call down).
    """

    def __init__(self, load: Callable[[_Source], bytes], cache_s: float, clock: Callable[[], float]) -> None:
        self._load = load
        self._cache_s = max(float(cache_s), JWKS_MIN_REFETCH_S)
        self._clock = clock
        self._guard = threading.Lock()
        self._sets: dict[_Source, _KeySet] = {}
        self._last_attempt: dict[_Source, float] = {}
        self._locks: dict[_Source, threading.Lock] = {}

    def keys_for(self, source: _Source, kid: str) -> tuple[_Key, ...]:
        with self._guard:
            keyset = self._sets.get(source)
        if keyset is None or self._clock() - keyset.fetched_at >= self._cache_s:
            keyset = self._refresh(source, seen=keyset)
        keys = keyset.keys.get(kid)
        if keys:
            return keys
        keyset = self._refresh(source, seen=keyset)  # the EHR may have rotated its keys
        keys = keyset.keys.get(kid)
        if keys:
            return keys
        raise _Reject("unknown_kid")

    def _lock_for(self, source: _Source) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(source, threading.Lock())

    def _refresh(self, source: _Source, *, seen: _KeySet | None) -> _KeySet:
        with self._lock_for(source):
            with self._guard:
                current = self._sets.get(source)
                last_attempt = self._last_attempt.get(source)
            if current is not None and current is not seen:
                return current  # another thread refreshed it while we waited
            now = self._clock()
            if last_attempt is not None and now - last_attempt < JWKS_MIN_REFETCH_S:
                if current is None:
                    raise _Reject("jwks_unavailable")
                return current
            with self._guard:
                self._last_attempt[source] = now
            try:
                fresh = _parse_jwks(self._load(source), now)
            except _JwksError as exc:
                log.warning("JWKS %s %s could not be used: %s", source.kind, source.location, exc)
                if current is not None and now - current.fetched_at < 2 * self._cache_s:
                    return current
                raise _Reject("jwks_unavailable") from None
            with self._guard:
                self._sets[source] = fresh
            return fresh


class ClientAuthenticator:
    """Verifies CDS clients' JWTs against the configured trusted issuers. One instance per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        replay_cache: ReplayCacheLike,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._replay = replay_cache
        self._clock = clock
        self._leeway = float(settings.jwt_leeway_s)
        self._issuers: dict[str, TrustedIssuer] = {}
        for issuer in settings.trusted_issuers:
            if issuer.iss in self._issuers:
                raise ConfigError(f"trusted issuer {issuer.iss!r} is configured twice")
            urls = ([issuer.jwks_url] if issuer.jwks_url else []) + list(issuer.jku_allowlist)
            for url in urls:
                if not _allows_plain_http(url, settings.dev_mode):
                    raise ConfigError(
                        f"trusted issuer {issuer.iss!r}: JWKS URL {url!r} must be https "
                        "(plain http only for 127.0.0.1/localhost or in dev mode)"
                    )
            self._issuers[issuer.iss] = issuer
        self._owns_session = session is None
        self._session = session if session is not None else outbound_session(address_policy(settings))
        self._jwks = _JwksCache(self._load, settings.jwks_cache_s, clock)
        for issuer in settings.trusted_issuers:
            if issuer.jwks_file:
                self._check_pinned_keys(issuer.iss, issuer.jwks_file)

    def _check_pinned_keys(self, iss: str, path: str) -> None:
        """A pinned key file is read and parsed at start-up: a missing or broken file stops the service
        with one line, instead of starting 'healthy' and refusing every call."""
        try:
            _parse_jwks(self._read_file(path), self._clock())
        except _JwksError as exc:
            raise ConfigError(f"trusted issuer {iss!r}: key 'jwks_file' {path!r}: {exc}") from None

    def close(self) -> None:
        """Release the HTTP session, if we created it."""
        if self._owns_session:
            self._session.close()

    def verify(self, authorization_header: str | None, audience: str) -> VerifiedClient:
        """The verified client, or `Unauthorized("unauthorized")` with the reason logged (never returned)."""
        seen: dict[str, object] = {}
        try:
            return self._verify(authorization_header, audience, seen)
        except _Reject as rejection:
            reason = rejection.reason
        except ServiceUnavailable:
            raise  # the replay cache is down: a 503 (retry), never a 401 blaming good credentials
        except Exception as exc:  # fail closed: nothing but Unauthorized or a 503 leaves this method
            reason = f"internal_error:{type(exc).__name__}"
        iss, kid, jti = (_loggable(seen.get(name)) for name in ("iss", "kid", "jti"))
        log.warning(
            "client JWT rejected: reason=%s iss=%s kid=%s jti=%s",
            reason,
            iss,
            kid,
            jti,
            extra={"reason": reason, "iss": iss, "kid": kid, "jti": jti},
        )
        raise Unauthorized(_UNAUTHORIZED)

    # -- the checks, in order --------------------------------------------------------------------------

    def _verify(
        self, authorization_header: str | None, audience: str, seen: dict[str, object]
    ) -> VerifiedClient:
        token = self._bearer_token(authorization_header)
        header, unverified = self._unverified_parts(token)
        seen.update(kid=header.get("kid"), iss=unverified.get("iss"), jti=unverified.get("jti"))

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise _Reject("alg_not_allowed")  # before any key lookup: none, HS*, anything unknown
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise _Reject("bad_typ")
        if "crit" in header or "b64" in header:
            raise _Reject("unsupported_header")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Reject("missing_kid")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _Reject("missing_iss")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise _Reject("untrusted_iss")

        source = self._key_source(issuer, header.get("jku", None), "jku" in header)
        candidates = [key for key in self._jwks.keys_for(source, kid) if _fits(key, alg)]
        if not candidates:
            raise _Reject("key_alg_mismatch")
        claims = self._verified_claims(token, candidates, alg)
        if claims.get("iss") != iss:
            raise _Reject("untrusted_iss")
        self._check_audience(claims.get("aud"), audience)
        exp = self._check_times(claims)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
            raise _Reject("missing_jti")
        tenant = claims.get("tenant")
        if issuer.tenant is not None and tenant != issuer.tenant:
            raise _Reject("tenant_mismatch")
        self._check_replay(iss, jti, exp)
        return VerifiedClient(iss=iss, jti=jti, kid=kid, tenant=tenant if isinstance(tenant, str) else None)

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if authorization_header is None or not authorization_header.strip():
            raise _Reject("missing_authorization")
        if len(authorization_header) > _MAX_TOKEN_CHARS:
            raise _Reject("token_too_large")
        scheme, _, rest = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _Reject("not_bearer")
        token = rest.strip()
        if not _COMPACT_JWS.fullmatch(token):
            raise _Reject("malformed_token")
        return token

    @staticmethod
    def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims as sent, used only to choose the issuer and key; nothing is trusted yet."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise _Reject("malformed_token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _Reject("malformed_token")
        return header, claims

    def _key_source(self, issuer: TrustedIssuer, jku: object, has_jku: bool) -> _Source:
        if issuer.jwks_file:
            # Pinned keys: the operator handed us the issuer's keys, so a `jku` header (real clients send
            # one on every token) is neither fetched nor needs allowlisting; the file decides.
            return _Source("file", issuer.jwks_file)
        if has_jku:
            allowed = set(issuer.jku_allowlist) | ({issuer.jwks_url} if issuer.jwks_url else set())
            if not isinstance(jku, str) or jku not in allowed:
                raise _Reject("jku_not_allowlisted")  # and it is never fetched
            return _Source("url", jku)
        if issuer.jwks_url:
            return _Source("url", issuer.jwks_url)
        raise _Reject("jwks_unavailable")  # config validation requires one of the two

    @staticmethod
    def _verified_claims(token: str, candidates: list[_Key], alg: str) -> dict[str, Any]:
        """Verify the signature with exactly `alg`; the claims are checked by us, against our clock."""
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key=candidate.key,
                    algorithms=[alg],
                    options={
                        "verify_signature": True,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                        "verify_sub": False,
                        "verify_jti": False,
                        "require": [],
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAlgorithmError:
                raise _Reject("alg_not_allowed") from None
            except jwt.InvalidKeyError:
                raise _Reject("key_alg_mismatch") from None
            except jwt.DecodeError:
                raise _Reject("malformed_token") from None
            except jwt.PyJWTError:
                raise _Reject("invalid_token") from None
            if not isinstance(claims, dict):
                raise _Reject("malformed_token")
            return claims
        raise _Reject("bad_signature")

    @staticmethod
    def _check_audience(aud: object, audience: str) -> None:
        values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not audience or audience not in [value for value in values if isinstance(value, str)]:
            raise _Reject("wrong_aud")

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        exp_f, iat_f, nbf_f = (_number(claims.get(name)) for name in ("exp", "iat", "nbf"))
        if exp_f is None:
            raise _Reject("missing_exp")
        if iat_f is None:
            raise _Reject("missing_iat")
        if "nbf" in claims and nbf_f is None:
            raise _Reject("bad_nbf")
        now = self._clock()
        if now > exp_f + self._leeway:
            raise _Reject("expired")
        if iat_f > now + self._leeway:
            raise _Reject("iat_in_future")
        if nbf_f is not None and nbf_f > now + self._leeway:
            raise _Reject("not_yet_valid")
        if exp_f < iat_f:
            raise _Reject("exp_before_iat")
        if exp_f - iat_f > self._settings.jwt_max_lifetime_s:
            raise _Reject("lifetime_too_long")
        return exp_f

    def _check_replay(self, iss: str, jti: str, exp: float) -> None:
        ttl = max(1, math.ceil(exp - self._clock()) + int(self._leeway))
        try:
            fresh = self._replay.add_if_new(f"{iss}|{jti}", ttl)
        except ServiceUnavailable:
            log.warning("replay cache unavailable: call refused with 503", extra={"iss": _loggable(iss)})
            raise
        except Exception:  # a cache we cannot reach must not let a replay through
            raise _Reject("replay_cache_unavailable") from None
        if not fresh:
            raise _Reject("replayed_jti")

    # -- fetching key sets ----------------------------------------------------------------------------

    def _load(self, source: _Source) -> bytes:
        if source.kind == "file":
            return self._read_file(source.location)
        return self._fetch(source.location)

    @staticmethod
    def _read_file(path: str) -> bytes:
        try:
            with Path(path).open("rb") as handle:
                data = handle.read(_JWKS_MAX_BYTES + 1)
        except OSError as exc:
            raise _JwksError(f"cannot read ({type(exc).__name__})") from None
        if len(data) > _JWKS_MAX_BYTES:
            raise _JwksError("larger than the JWKS size limit")
        return data

    def _fetch(self, url: str) -> bytes:
        """GET with the configured timeout (per wait, and for the whole body), no redirects, bounded size."""
        timeout = self._settings.jwks_timeout_s
        deadline = time.monotonic() + timeout
        try:
            with self._session.get(
                url,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/jwk-set+json, application/json"},
            ) as response:
                if response.status_code != 200:
                    raise _JwksError(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_content(chunk_size=16 * 1024):
                    body.extend(chunk)
                    if len(body) > _JWKS_MAX_BYTES:
                        raise _JwksError("larger than the JWKS size limit")
                    if time.monotonic() > deadline:
                        raise _JwksError("took longer than the JWKS timeout")
                return bytes(body)
        except requests.RequestException as exc:
            raise _JwksError(f"request failed ({type(exc).__name__})") from None
        except OutboundRefused as exc:
            raise _JwksError(f"not fetched: {exc.message}") from None

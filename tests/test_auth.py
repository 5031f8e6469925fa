"""Client JWT verification (cds/web/auth.py): every check has a token that fails it, and fails it quietly.

Keys are generated here; the EHR's JWKS is served by a local HTTP server on 127.0.0.1 that records every
path requested, so a test can prove a URL was (or was never) fetched. Time comes from a fake clock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.config import Settings, TrustedIssuer, load_settings
from cds.errors import ConfigError, Unauthorized
from cds.web.auth import (
    JWKS_MIN_REFETCH_S,
    ClientAuthenticator,
    VerifiedClient,
    expected_audience,
)
from tests.support.constants import property_examples

ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
AUD = f"{BASE}/cds-services/ketamine-order-select"
LEEWAY = 30


# -- keys, JWKS server, clock, replay caches ---------------------------------------------------------


@dataclass
class Keys:
    ec_kid: str
    ec: ec.EllipticCurvePrivateKey
    rsa_kid: str
    rsa: rsa.RSAPrivateKey

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.ec, self.ec_kid), public_jwk(self.rsa, self.rsa_kid, "RS384")]}


def public_jwk(private_key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(
        "ES384" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS384"
    )
    jwk = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    if alg:
        jwk["alg"] = alg
    return jwk


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        ec_kid="ec-" + uuid.uuid4().hex[:8],
        ec=ec.generate_private_key(ec.SECP384R1()),
        rsa_kid="rsa-" + uuid.uuid4().hex[:8],
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@dataclass
class JwksServer:
    base_url: str
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base_url + path

    def serve_json(self, path: str, body: Any) -> str:
        with self.lock:
            self.routes[path] = (200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return self.url(path)

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits.count(path)


@pytest.fixture(scope="session")
def _server() -> Iterator[JwksServer]:
    holder: dict[str, JwksServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server = holder["server"]
            with server.lock:
                server.hits.append(self.path)
                status, body, headers = server.routes.get(self.path, (404, b"{}", {}))
            if self.path.startswith("/slow"):
                time.sleep(1.0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (the slow route)
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    holder["server"] = JwksServer(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["server"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(_server: JwksServer, keys: Keys) -> JwksServer:
    """The session's server, reset: /jwks.json holds both keys; no hits recorded."""
    with _server.lock:
        _server.routes.clear()
        _server.hits.clear()
    _server.serve_json("/jwks.json", keys.jwks())
    return _server


class Clock:
    """The authenticator's clock: a fixed instant (2026-11-18T09:46:40Z) that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryReplay:
    """The replay-cache protocol, in memory (TTL recorded, not enforced: tests never outlive a token)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        with self.lock:
            if jti_key in self.seen:
                return False
            self.seen[jti_key] = ttl_s
            return True


class RedisReplay:
    """The replay-cache protocol over Redis: SET NX EX, as the shared implementation does."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        return bool(self.client.set(self.prefix + jti_key, b"1", nx=True, ex=ttl_s))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def replay() -> MemoryReplay:
    return MemoryReplay()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def make_settings(*issuers: TrustedIssuer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_base_url": BASE,
        "trusted_issuers": issuers,
        "jwt_leeway_s": LEEWAY,
        "jwt_max_lifetime_s": 3600,
        "jwks_timeout_s": 2.0,
        "jwks_cache_s": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_auth(server: JwksServer, clock: Clock, replay: MemoryReplay, session: requests.Session) -> Any:
    def build(*issuers: TrustedIssuer, replay_cache: Any = None, **overrides: Any) -> ClientAuthenticator:
        issuers = issuers or (TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json")),)
        return ClientAuthenticator(
            make_settings(*issuers, **overrides),
            replay_cache=replay if replay_cache is None else replay_cache,
            session=session,
            clock=clock,
        )

    return build


@pytest.fixture
def auth(make_auth: Any) -> ClientAuthenticator:
    return make_auth()


# -- token builders ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(clock: Clock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.now)
    values: dict[str, Any] = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def es384(keys: Keys, payload: dict[str, Any], **header: Any) -> str:
    headers = {"kid": keys.ec_kid, **header}
    return jwt.encode(payload, keys.ec, algorithm="ES384", headers=headers)


def rs384(keys: Keys, payload: dict[str, Any], **header: Any) -> str:
    headers = {"kid": keys.rsa_kid, **header}
    return jwt.encode(payload, keys.rsa, algorithm="RS384", headers=headers)


def raw_token(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """Compact JWS built by hand, for headers PyJWT would refuse to produce."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def assert_rejected(
    auth: ClientAuthenticator, header: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rejected with the bare word; the reason is logged; the token is not, not even a segment of it."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"), pytest.raises(Unauthorized) as excinfo:
        auth.verify(header, AUD)
    assert str(excinfo.value) == "unauthorized"
    assert excinfo.value.message == "unauthorized"
    assert excinfo.value.status == 401
    assert all(issue.diagnostics == "unauthorized" for issue in excinfo.value.issues)
    assert excinfo.value.__cause__ is None
    records = [r for r in caplog.records if r.name == "cds.web.auth"]
    rejections = [r for r in records if r.getMessage().startswith("client JWT rejected")]
    assert len(rejections) == 1, [r.getMessage() for r in records]
    assert rejections[0].levelno == logging.WARNING
    assert f"reason={reason} " in rejections[0].getMessage()
    assert rejections[0].reason == reason  # type: ignore[attr-defined]
    token = (header or "").partition(" ")[2].strip()
    pieces = [token, *(part for part in token.split(".") if len(part) >= 8)] if token else []
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        for piece in pieces:
            assert piece not in text


# -- accepted ---------------------------------------------------------------------------------------


def test_valid_es384_accepted(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, replay: MemoryReplay
) -> None:
    payload = claims(clock)
    client = auth.verify(bearer(es384(keys, payload)), AUD)
    assert client == VerifiedClient(iss=ISS, jti=payload["jti"], kid=keys.ec_kid, tenant=None)
    # the jti is kept for the rest of the token's life plus the leeway
    assert replay.seen == {f"{ISS}|{payload['jti']}": 300 + LEEWAY}


def test_valid_rs384_accepted(auth: ClientAuthenticator, keys: Keys, clock: Clock) -> None:
    client = auth.verify(bearer(rs384(keys, claims(clock))), AUD)
    assert client.kid == keys.rsa_kid


def test_sandbox_shaped_token_accepted(make_auth: Any, server: JwksServer, keys: Keys, clock: Clock) -> None:
    """What the CDS Hooks sandbox sends: ES384, typ JWT, kid, jku; no tenant, no sub; lowercase scheme ok."""
    jwks_url = server.url("/jwks.json")
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=jwks_url))
    token = es384(keys, claims(clock), jku=jwks_url, typ="jwt")
    assert auth.verify(f"bearer  {token} ", AUD).iss == ISS


def test_jku_allowlisted_accepted(make_auth: Any, server: JwksServer, keys: Keys, clock: Clock) -> None:
    jku = server.serve_json("/ehr/.well-known/jwks.json", keys.jwks())
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json"), jku_allowlist=(jku,)))
    assert auth.verify(bearer(es384(keys, claims(clock), jku=jku)), AUD).kid == keys.ec_kid
    assert server.count("/ehr/.well-known/jwks.json") == 1
    assert server.count("/jwks.json") == 0


def test_aud_list_containing_the_url_accepted(auth: ClientAuthenticator, keys: Keys, clock: Clock) -> None:
    token = es384(keys, claims(clock, aud=["https://other.example.org/", AUD]))
    assert auth.verify(bearer(token), AUD).iss == ISS


def test_jwks_file_accepted(make_auth: Any, keys: Keys, clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_file=str(path)))
    assert auth.verify(bearer(rs384(keys, claims(clock))), AUD).kid == keys.rsa_kid


def test_tenant_matching_accepted(make_auth: Any, server: JwksServer, keys: Keys, clock: Clock) -> None:
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json"), tenant="hospital-a"))
    assert auth.verify(bearer(es384(keys, claims(clock, tenant="hospital-a"))), AUD).tenant == "hospital-a"


def test_jwks_cached_between_calls(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock
) -> None:
    for _ in range(5):
        auth.verify(bearer(es384(keys, claims(clock))), AUD)
    assert server.count("/jwks.json") == 1
    clock.now += 3601  # past jwks_cache_s: fetched again
    auth.verify(bearer(es384(keys, claims(clock))), AUD)
    assert server.count("/jwks.json") == 2


def test_key_rotation_picked_up(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth.verify(bearer(es384(keys, claims(clock))), AUD)
    new_key, new_kid = ec.generate_private_key(ec.SECP384R1()), "rotated-" + uuid.uuid4().hex[:6]
    server.serve_json("/jwks.json", {"keys": [public_jwk(new_key, new_kid)]})  # the EHR rotates
    clock.now += JWKS_MIN_REFETCH_S + 1
    token = jwt.encode(claims(clock), new_key, algorithm="ES384", headers={"kid": new_kid})
    assert auth.verify(bearer(token), AUD).kid == new_kid
    assert server.count("/jwks.json") == 2
    # the retired key is gone from the refreshed set
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "unknown_kid", caplog)


# -- rejected: the Authorization header -------------------------------------------------------------


def test_missing_authorization(auth: ClientAuthenticator, caplog: pytest.LogCaptureFixture) -> None:
    assert_rejected(auth, None, "missing_authorization", caplog)
    assert_rejected(auth, "   ", "missing_authorization", caplog)


def test_non_bearer_scheme(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = es384(keys, claims(clock))
    assert_rejected(auth, f"Basic {token}", "not_bearer", caplog)
    assert_rejected(auth, token, "not_bearer", caplog)
    assert_rejected(auth, f"Token {token}", "not_bearer", caplog)


@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer a b.c",
        "Bearer ....",
        "Bearer é.é.é",
    ],
)
def test_garbage_token(auth: ClientAuthenticator, value: str, caplog: pytest.LogCaptureFixture) -> None:
    assert_rejected(auth, value, "malformed_token", caplog)


def test_base64_garbage_token(auth: ClientAuthenticator, caplog: pytest.LogCaptureFixture) -> None:
    assert_rejected(auth, bearer("eyJhbGciOi.bm90IGpzb24.c2ln"), "malformed_token", caplog)
    assert_rejected(auth, bearer(f"{b64(b'[1]')}.{b64(b'{}')}.c2ln"), "malformed_token", caplog)
    assert_rejected(auth, bearer(f"{b64(b'{}')}.{b64(b'[1,2]')}.c2ln"), "malformed_token", caplog)


def test_oversized_header(auth: ClientAuthenticator, caplog: pytest.LogCaptureFixture) -> None:
    assert_rejected(auth, "Bearer " + "a" * 20_000, "token_too_large", caplog)


# -- rejected: the JOSE header ----------------------------------------------------------------------


def test_alg_none_rejected_without_key_lookup(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for alg in ("none", "None", "NONE"):
        token = raw_token({"alg": alg, "typ": "JWT", "kid": keys.ec_kid}, claims(clock))
        assert_rejected(auth, bearer(token), "alg_not_allowed", caplog)
    assert server.hits == []


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_public_key_rejected(
    auth: ClientAuthenticator,
    server: JwksServer,
    keys: Keys,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    alg: str,
) -> None:
    """The classic key-confusion attack: HMAC over the token with the (public) PEM as the secret."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for private_key, kid in ((keys.rsa, keys.rsa_kid), (keys.ec, keys.ec_kid)):
        pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = raw_token(
            {"alg": alg, "typ": "JWT", "kid": kid},
            claims(clock),
            lambda message, pem=pem: hmac.new(pem, message, digest).digest(),
        )
        assert_rejected(auth, bearer(token), "alg_not_allowed", caplog)
    assert server.hits == []  # refused before any key lookup


@pytest.mark.parametrize("alg", ["ES256K", "EdDSA", "RS1", "es384", "", 384])
def test_other_algorithms_rejected(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture, alg: Any
) -> None:
    token = raw_token({"alg": alg, "typ": "JWT", "kid": keys.ec_kid}, claims(clock), lambda m: b"x" * 96)
    assert_rejected(auth, bearer(token), "alg_not_allowed", caplog)


@pytest.mark.parametrize("typ", [None, "JOSE", "at+jwt", 1])
def test_bad_typ(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture, typ: Any
) -> None:
    header = {"alg": "ES384", "kid": keys.ec_kid, "typ": typ}
    token = raw_token(
        {k: v for k, v in header.items() if v is not None},
        claims(clock),
        lambda m: jwt.get_algorithm_by_name("ES384").sign(m, keys.ec),
    )
    assert_rejected(auth, bearer(token), "bad_typ", caplog)


def test_missing_kid(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = jwt.encode(claims(clock), keys.ec, algorithm="ES384")
    assert_rejected(auth, bearer(token), "missing_kid", caplog)
    assert_rejected(auth, bearer(es384(keys, claims(clock), kid="")), "missing_kid", caplog)


def test_crit_header_rejected(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = raw_token(
        {"alg": "ES384", "typ": "JWT", "kid": keys.ec_kid, "crit": ["b64"], "b64": True},
        claims(clock),
        lambda m: jwt.get_algorithm_by_name("ES384").sign(m, keys.ec),
    )
    assert_rejected(auth, bearer(token), "unsupported_header", caplog)


# -- rejected: issuer and keys ----------------------------------------------------------------------


def test_wrong_iss(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    assert_rejected(
        auth, bearer(es384(keys, claims(clock, iss="https://evil.example.org"))), "untrusted_iss", caplog
    )
    assert_rejected(auth, bearer(es384(keys, claims(clock, iss=ISS + "/"))), "untrusted_iss", caplog)
    assert_rejected(auth, bearer(es384(keys, claims(clock, iss=None))), "missing_iss", caplog)
    assert server.hits == []


def test_jku_not_allowlisted_rejected_and_never_fetched(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    evil = server.serve_json("/attacker/jwks.json", keys.jwks())  # would even verify, if fetched
    allowed = server.serve_json("/ehr/jwks.json", keys.jwks())
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json"), jku_allowlist=(allowed,)))
    assert_rejected(auth, bearer(es384(keys, claims(clock), jku=evil)), "jku_not_allowlisted", caplog)
    assert_rejected(
        auth, bearer(es384(keys, claims(clock), jku=allowed + "?x=1")), "jku_not_allowlisted", caplog
    )
    assert_rejected(auth, bearer(es384(keys, claims(clock), jku=["x"])), "jku_not_allowlisted", caplog)
    assert server.count("/attacker/jwks.json") == 0
    assert server.hits == []


def test_pinned_file_keys_accept_a_token_with_any_jku_and_never_fetch_it(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, tmp_path: Path
) -> None:
    """Real clients put a jku in every token; with a jwks_file the keys are pinned, so the jku is neither
    required to be allowlisted nor fetched (it used to be refused as jku_not_allowlisted).
    """
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_file=str(path)))
    jku = server.serve_json("/somewhere.json", keys.jwks())
    assert auth.verify(bearer(es384(keys, claims(clock), jku=jku)), AUD).kid == keys.ec_kid
    assert auth.verify(bearer(rs384(keys, claims(clock), jku="https://elsewhere.example/k")), AUD)
    assert server.hits == []


def test_pinned_file_keys_decide_even_when_the_jku_serves_other_keys(
    make_auth: Any,
    server: JwksServer,
    keys: Keys,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A token signed by a key the file does not hold is refused, whatever its jku would have served."""
    stranger = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_file=str(path)))
    jku = server.serve_json("/attacker.json", {"keys": [public_jwk(stranger, keys.ec_kid)]})
    forged = jwt.encode(claims(clock), stranger, algorithm="ES384", headers={"kid": keys.ec_kid, "jku": jku})
    assert_rejected(auth, bearer(forged), "bad_signature", caplog)
    assert server.hits == []


def test_unknown_kid_refreshes_once_then_rejects(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth.verify(bearer(es384(keys, claims(clock))), AUD)
    assert server.count("/jwks.json") == 1
    clock.now += JWKS_MIN_REFETCH_S + 1
    assert_rejected(auth, bearer(es384(keys, claims(clock), kid="no-such-kid")), "unknown_kid", caplog)
    assert server.count("/jwks.json") == 2  # one refresh
    # a flood of made-up kids does not hammer the EHR: no further fetch within the interval
    for n in range(20):
        assert_rejected(auth, bearer(es384(keys, claims(clock), kid=f"made-up-{n}")), "unknown_kid", caplog)
    assert server.count("/jwks.json") == 2
    clock.now += JWKS_MIN_REFETCH_S + 1
    assert_rejected(auth, bearer(es384(keys, claims(clock), kid="still-unknown")), "unknown_kid", caplog)
    assert server.count("/jwks.json") == 3


def test_unknown_kid_on_first_call_fetches_once(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    assert_rejected(auth, bearer(es384(keys, claims(clock), kid="nope")), "unknown_kid", caplog)
    assert server.count("/jwks.json") == 1


def test_key_of_wrong_type_for_alg(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # RS384 header naming the EC key's kid; ES384 header naming the RSA key's kid
    token = jwt.encode(claims(clock), keys.rsa, algorithm="RS384", headers={"kid": keys.ec_kid})
    assert_rejected(auth, bearer(token), "key_alg_mismatch", caplog)
    token = jwt.encode(claims(clock), keys.ec, algorithm="ES384", headers={"kid": keys.rsa_kid})
    assert_rejected(auth, bearer(token), "key_alg_mismatch", caplog)
    # ES256 on a P-384 key
    token = raw_token(
        {"alg": "ES256", "typ": "JWT", "kid": keys.ec_kid}, claims(clock), lambda m: b"\x01" * 64
    )
    assert_rejected(auth, bearer(token), "key_alg_mismatch", caplog)
    # the JWK says RS384; a PS384 token with that key is refused
    token = jwt.encode(claims(clock), keys.rsa, algorithm="PS384", headers={"kid": keys.rsa_kid})
    assert_rejected(auth, bearer(token), "key_alg_mismatch", caplog)


def test_symmetric_and_private_jwks_entries_ignored(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    private = jwt.get_algorithm_by_name("ES384").to_jwk(keys.ec, as_dict=True)
    private.update(kid=keys.ec_kid)
    url = server.serve_json(
        "/odd.json",
        {
            "keys": [
                {"kty": "oct", "kid": "hmac", "k": b64(b"secret" * 8)},
                private,
                public_jwk(keys.rsa, "r"),
            ]
        },
    )
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=url))
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "unknown_kid", caplog)


def test_tampered_signature(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for token in (es384(keys, claims(clock)), rs384(keys, claims(clock))):
        head, body, sig = token.split(".")
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[5] ^= 0x01
        assert_rejected(auth, bearer(f"{head}.{body}.{b64(bytes(raw))}"), "bad_signature", caplog)
        # or the claims changed under an intact signature
        forged = dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))), jti="forged")
        assert_rejected(
            auth, bearer(f"{head}.{b64(json.dumps(forged).encode())}.{sig}"), "bad_signature", caplog
        )


def test_signed_by_another_key_with_the_same_kid(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    impostor = ec.generate_private_key(ec.SECP384R1())
    token = jwt.encode(claims(clock), impostor, algorithm="ES384", headers={"kid": keys.ec_kid})
    assert_rejected(auth, bearer(token), "bad_signature", caplog)


def test_jwks_unreachable(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=server.url("/missing.json")))
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "jwks_unavailable", caplog)
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "jwks_unavailable", caplog)
    assert server.count("/missing.json") == 1  # failures are rate-limited too


def test_jwks_redirect_not_followed(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with server.lock:
        server.routes["/moved.json"] = (302, b"", {"Location": server.url("/jwks.json")})
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=server.url("/moved.json")))
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "jwks_unavailable", caplog)
    assert server.count("/jwks.json") == 0


def test_jwks_fetch_bounded_by_timeout(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.serve_json("/slow.json", keys.jwks())  # the server sleeps 1 s before answering
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=url), jwks_timeout_s=0.2)
    # without the timeout the key set would arrive after 1 s and the token would pass
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "jwks_unavailable", caplog)


def test_stale_keys_used_when_refresh_fails(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock
) -> None:
    auth.verify(bearer(es384(keys, claims(clock))), AUD)
    with server.lock:
        server.routes["/jwks.json"] = (503, b"", {})
    clock.now += 3601  # cache expired; the refresh fails; the keys we hold still serve one more period
    auth.verify(bearer(es384(keys, claims(clock))), AUD)
    assert server.count("/jwks.json") == 2


def test_plain_http_jwks_refused_outside_dev_and_loopback(keys: Keys, tmp_path: Path) -> None:
    replay = MemoryReplay()
    pinned = tmp_path / "ehr-jwks.json"
    pinned.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    for issuer in (
        TrustedIssuer(iss=ISS, jwks_url="http://ehr.example.org/jwks.json"),
        TrustedIssuer(iss=ISS, jwks_file=str(pinned), jku_allowlist=("http://ehr.example.org/jwks",)),
    ):
        with pytest.raises(ConfigError, match="https"):
            ClientAuthenticator(make_settings(issuer), replay_cache=replay)
        ClientAuthenticator(make_settings(issuer, dev_mode=True), replay_cache=replay).close()
    for url in ("http://127.0.0.1:9/j", "http://localhost/j", "https://ehr.example.org/j"):
        ClientAuthenticator(make_settings(TrustedIssuer(iss=ISS, jwks_url=url)), replay_cache=replay).close()
    twice = (TrustedIssuer(iss=ISS, jwks_url="https://a/j"), TrustedIssuer(iss=ISS, jwks_url="https://b/j"))
    with pytest.raises(ConfigError, match="twice"):
        ClientAuthenticator(make_settings(*twice), replay_cache=replay)


# -- rejected: claims -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        f"{BASE}/cds-services/other-service",
        AUD + "/",
        AUD + "/feedback",
        AUD.replace("https", "http"),
        BASE,
        ["https://other.example.org/"],
        [],
        {"url": AUD},
        None,
    ],
)
def test_wrong_aud(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture, aud: Any
) -> None:
    assert_rejected(auth, bearer(es384(keys, claims(clock, aud=aud))), "wrong_aud", caplog)


def test_expired(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(clock.now)
    token = es384(keys, claims(clock, iat=now - 400, exp=now - LEEWAY - 1))
    assert_rejected(auth, bearer(token), "expired", caplog)
    # within the leeway it still passes
    auth.verify(bearer(es384(keys, claims(clock, iat=now - 400, exp=now - LEEWAY + 1))), AUD)


def test_iat_in_future(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(clock.now)
    token = es384(keys, claims(clock, iat=now + LEEWAY + 5, exp=now + 300))
    assert_rejected(auth, bearer(token), "iat_in_future", caplog)
    auth.verify(bearer(es384(keys, claims(clock, iat=now + LEEWAY - 1, exp=now + 300))), AUD)


def test_nbf_in_future(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(clock.now)
    assert_rejected(auth, bearer(es384(keys, claims(clock, nbf=now + 120))), "not_yet_valid", caplog)
    assert_rejected(auth, bearer(es384(keys, claims(clock, nbf="soon"))), "bad_nbf", caplog)
    auth.verify(bearer(es384(keys, claims(clock, nbf=now))), AUD)  # Epic sends nbf


def test_lifetime_too_long(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(clock.now)
    assert_rejected(auth, bearer(es384(keys, claims(clock, exp=now + 3601))), "lifetime_too_long", caplog)
    assert_rejected(auth, bearer(es384(keys, claims(clock, exp=now - 1))), "exp_before_iat", caplog)
    auth.verify(bearer(es384(keys, claims(clock, exp=now + 3600))), AUD)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": None}, "missing_exp"),
        ({"exp": "tomorrow"}, "missing_exp"),
        ({"exp": True}, "missing_exp"),
        ({"iat": None}, "missing_iat"),
        ({"iat": [1]}, "missing_iat"),
        ({"jti": None}, "missing_jti"),
        ({"jti": ""}, "missing_jti"),
        ({"jti": 12345}, "missing_jti"),
        ({"jti": "j" * 256}, "missing_jti"),
    ],
)
def test_required_claims(
    auth: ClientAuthenticator,
    keys: Keys,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, Any],
    reason: str,
) -> None:
    payload = claims(clock)
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    token = raw_token(
        {"alg": "ES384", "typ": "JWT", "kid": keys.ec_kid},
        payload,
        lambda m: jwt.get_algorithm_by_name("ES384").sign(m, keys.ec),
    )
    assert_rejected(auth, bearer(token), reason, caplog)


def test_tenant_mismatch(
    make_auth: Any, server: JwksServer, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json"), tenant="hospital-a"))
    assert_rejected(auth, bearer(es384(keys, claims(clock, tenant="hospital-b"))), "tenant_mismatch", caplog)
    assert_rejected(
        auth, bearer(es384(keys, claims(clock))), "tenant_mismatch", caplog
    )  # the sandbox sends none


# -- rejected: replay -------------------------------------------------------------------------------


def test_replayed_jti(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = es384(keys, claims(clock))
    auth.verify(bearer(token), AUD)
    assert_rejected(auth, bearer(token), "replayed_jti", caplog)
    # and a fresh token reusing the jti is a replay too
    payload = jwt.decode(token, options={"verify_signature": False})
    assert_rejected(auth, bearer(es384(keys, claims(clock, jti=payload["jti"]))), "replayed_jti", caplog)


def test_rejected_token_does_not_burn_its_jti(
    auth: ClientAuthenticator, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    jti = str(uuid.uuid4())
    assert_rejected(auth, bearer(es384(keys, claims(clock, jti=jti, aud=BASE))), "wrong_aud", caplog)
    auth.verify(bearer(es384(keys, claims(clock, jti=jti))), AUD)


def test_replay_cache_failure_fails_closed(
    make_auth: Any, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
            raise ConnectionError("cache down")

    auth = make_auth(replay_cache=Broken())
    assert_rejected(auth, bearer(es384(keys, claims(clock))), "replay_cache_unavailable", caplog)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at 127.0.0.1:6379 is required in CI: {exc}")
        pytest.skip(f"no Redis at 127.0.0.1:6379: {exc}")
    try:
        yield client
    finally:
        client.close()


def test_replay_across_two_instances_sharing_redis(
    server: JwksServer,
    keys: Keys,
    clock: Clock,
    session: requests.Session,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = f"test-auth:{uuid.uuid4().hex}:"
    settings_ = make_settings(TrustedIssuer(iss=ISS, jwks_url=server.url("/jwks.json")))
    worker_a = ClientAuthenticator(
        settings_, replay_cache=RedisReplay(redis_client, prefix), session=session, clock=clock
    )
    worker_b = ClientAuthenticator(
        settings_, replay_cache=RedisReplay(redis_client, prefix), session=session, clock=clock
    )
    try:
        token = es384(keys, claims(clock))
        worker_a.verify(bearer(token), AUD)
        assert_rejected(worker_b, bearer(token), "replayed_jti", caplog)
        assert_rejected(worker_a, bearer(token), "replayed_jti", caplog)
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        ttl = redis_client.ttl(f"{prefix}{ISS}|{jti}")
        assert 0 < ttl <= 300 + LEEWAY
    finally:
        keys_written = list(redis_client.scan_iter(match=prefix + "*"))
        if keys_written:
            redis_client.delete(*keys_written)


# -- concurrency ------------------------------------------------------------------------------------


def test_concurrent_verification_fetches_once(
    auth: ClientAuthenticator, server: JwksServer, keys: Keys, clock: Clock
) -> None:
    """Gunicorn threads: many verifications at once, one JWKS fetch, each jti accepted exactly once."""
    tokens = [es384(keys, claims(clock)) for _ in range(8)] * 4
    results: list[str] = []
    lock = threading.Lock()

    def work(token: str) -> None:
        try:
            auth.verify(bearer(token), AUD)
            outcome = "ok"
        except Unauthorized:
            outcome = "rejected"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results.count("ok") == 8
    assert results.count("rejected") == 24
    assert server.count("/jwks.json") == 1


# -- configuration as the docs describe it -----------------------------------------------------------


def test_production_refuses_to_start_without_a_trusted_issuer() -> None:
    with pytest.raises(ConfigError, match="KETAMINE_CDS_TRUSTED_ISSUERS"):
        load_settings(environ={"KETAMINE_CDS_PUBLIC_BASE_URL": BASE})


def test_documented_issuer_configs_load_and_verify(
    server: JwksServer,
    keys: Keys,
    clock: Clock,
    replay: MemoryReplay,
    session: requests.Session,
    tmp_path: Path,
) -> None:
    """docs/trusting-an-ehr.md: inline JSON with a JWKS URL, and `@file` naming a JWKS file."""
    jwks_path = tmp_path / "ehr-jwks.json"
    jwks_path.write_text(json.dumps(keys.jwks()), encoding="utf-8")
    issuers_path = tmp_path / "issuers.json"
    issuers_path.write_text(json.dumps([{"iss": ISS, "jwks_file": str(jwks_path)}]), encoding="utf-8")
    inline = json.dumps(
        [{"iss": ISS, "jwks_url": server.url("/jwks.json"), "jku_allowlist": [server.url("/jwks.json")]}]
    )
    for value in (inline, f"@{issuers_path}"):
        settings_ = load_settings(
            environ={"KETAMINE_CDS_TRUSTED_ISSUERS": value, "KETAMINE_CDS_PUBLIC_BASE_URL": BASE + "/"}
        )
        auth = ClientAuthenticator(settings_, replay_cache=replay, session=session, clock=clock)
        audience = expected_audience(settings_.public_base_url or "", "/cds-services/ketamine-order-select")
        assert audience == AUD
        assert auth.verify(bearer(es384(keys, claims(clock))), audience).iss == ISS


# -- expected_audience ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("https://cds.example.org", "/cds-services", "https://cds.example.org/cds-services"),
        ("https://cds.example.org/", "/cds-services/x", "https://cds.example.org/cds-services/x"),
        ("https://cds.example.org//", "cds-services/x", "https://cds.example.org/cds-services/x"),
        (
            "https://h.example.org/ketamine/",
            "/cds-services/x/feedback",
            "https://h.example.org/ketamine/cds-services/x/feedback",
        ),
        ("http://127.0.0.1:8080", "/cds-services/", "http://127.0.0.1:8080/cds-services/"),
        ("https://cds.example.org/", "", "https://cds.example.org"),
        ("https://cds.example.org/CDSX/", "/x", "https://cds.example.org/CDSX/x"),  # only slashes trimmed
        ("https://cds.example.org/x", "y/", "https://cds.example.org/x/y/"),
        ("https://cds.example.org", "/X-services", "https://cds.example.org/X-services"),
    ],
)
def test_expected_audience(base: str, path: str, expected: str) -> None:
    assert expected_audience(base, path) == expected


# -- fuzz: nothing but Unauthorized, ever -----------------------------------------------------------

_FUZZ_KID = "fuzz"
_FUZZ_KEY = ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def fuzz_auth(_server: JwksServer) -> Iterator[ClientAuthenticator]:
    _server.serve_json("/fuzz-jwks.json", {"keys": [public_jwk(_FUZZ_KEY, _FUZZ_KID)]})
    auth = ClientAuthenticator(
        make_settings(
            TrustedIssuer(iss=ISS, jwks_url=_server.url("/fuzz-jwks.json"), tenant="t"),
            private_network_allowlist=("127.0.0.1/32",),  # its own session: the loopback JWKS is listed
        ),
        replay_cache=MemoryReplay(),
        clock=lambda: float(_FUZZ_NOW),
    )
    try:
        yield auth
    finally:
        auth.close()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_b64_segments = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60
)
_DELETE = object()
# A fixed instant, shared by the strategy and the authenticator's clock (never the wall clock).
_FUZZ_NOW = 1_795_000_000


@dataclass(frozen=True)
class _NearValid:
    header: dict[str, Any]
    payload: dict[str, Any]
    signed: bool
    authorization: str


@st.composite
def _near_valid(draw: st.DrawFn) -> _NearValid:
    """A well-formed, trusted-issuer token with a few fields broken, signed for real or not: reaches the
    key lookup, the signature check and the claim checks, not just the parser."""
    now = _FUZZ_NOW
    header: dict[str, Any] = {"alg": "ES384", "typ": "JWT", "kid": _FUZZ_KID}
    payload: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 300,
        "jti": str(draw(st.uuids())),
        "tenant": "t",
    }
    extra = st.sampled_from(["jku", "crit", "nbf", "x5u", "b64"])
    for target in (header, payload):
        names = [*sorted(target), draw(extra)]
        for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            value = draw(
                st.just(_DELETE)
                | _json_values
                | st.integers(now - 10_000, now + 10_000)
                | st.sampled_from(["none", "HS256", "RS384", "ES256", AUD, ISS, "JWT"])
            )
            if value is _DELETE:
                target.pop(name, None)
            else:
                target[name] = value
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signed = draw(st.booleans())
    if signed:
        signature = b64(jwt.get_algorithm_by_name("ES384").sign(signing_input.encode(), _FUZZ_KEY))
    else:
        signature = draw(_b64_segments)
    return _NearValid(header, payload, signed, f"Bearer {signing_input}.{signature}")


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < float("inf")


def _spec_accepts(token: _NearValid, replayed: bool) -> bool:
    """The verdict the module docstring and RFC 7519 give for a near-valid token, written independently of
    cds.web.auth: the fuzz issuer has one P-384 key (kid "fuzz"), tenant "t", leeway 30 s, lifetime 1 h,
    and no jku allowlist."""
    header, payload, now = token.header, token.payload, _FUZZ_NOW
    typ, aud, jti = header.get("typ"), payload.get("aud"), payload.get("jti")
    exp, iat, nbf = payload.get("exp"), payload.get("iat"), payload.get("nbf", now)
    header_ok = (
        header.get("alg") == "ES384"
        and isinstance(typ, str)
        and typ.upper() == "JWT"
        and header.get("kid") == _FUZZ_KID
        and not {"crit", "b64", "jku"} & set(header)
    )
    times_ok = (
        _finite_number(exp)
        and _finite_number(iat)
        and _finite_number(nbf)
        and now <= exp + LEEWAY
        and iat <= now + LEEWAY
        and nbf <= now + LEEWAY
        and iat <= exp <= iat + 3600
    )
    return (
        token.signed
        and header_ok
        and times_ok
        and payload.get("iss") == ISS
        and (aud == AUD or (isinstance(aud, list) and AUD in aud))
        and isinstance(jti, str)
        and 0 < len(jti) <= 255
        and payload.get("tenant") == "t"
        and not replayed
    )


@st.composite
def _token_shaped(draw: st.DrawFn) -> str:
    """Three base64url segments of arbitrary JSON (or not JSON at all)."""
    header = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "alg": st.sampled_from(["ES384", "RS384", "PS256", "none", "HS256"]) | _json_values,
                "typ": st.sampled_from(["JWT", "jwt"]) | _json_values,
                "kid": st.sampled_from([_FUZZ_KID, ""]) | _json_values,
                "jku": st.just("http://127.0.0.1:1/x") | _json_values,
                "crit": _json_values,
            },
        )
    )
    payload = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "iss": st.just(ISS) | _json_values,
                "aud": st.just(AUD) | _json_values,
                "exp": st.integers() | _json_values,
                "iat": st.integers() | _json_values,
                "jti": _json_values,
                "tenant": _json_values,
            },
        )
        | _json_values
    )
    parts = [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), draw(_b64_segments)]
    if draw(st.booleans()):
        parts[draw(st.integers(0, 2))] = draw(_b64_segments)
    return "Bearer " + ".".join(parts)


def _outcome(auth: ClientAuthenticator, header: str | None) -> object:
    try:
        return auth.verify(header, AUD)
    except Unauthorized as exc:
        return exc


@settings(
    max_examples=property_examples(400),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    header=st.none()
    | st.text()
    | st.text().map(lambda s: "Bearer " + s)
    | st.lists(_b64_segments, min_size=1, max_size=5).map(lambda p: "Bearer " + ".".join(p))
    | _token_shaped()
)
def test_fuzzed_authorization_header_only_ever_unauthorized(
    fuzz_auth: ClientAuthenticator, header: str | None
) -> None:
    """Arbitrary headers (never signed by the issuer's key): always Unauthorized("unauthorized")."""
    result = _outcome(fuzz_auth, header)
    assert isinstance(result, Unauthorized)
    assert str(result) == "unauthorized"


_ACCEPTED_JTIS: set[str] = set()


@settings(
    max_examples=property_examples(400),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(token=_near_valid())
def test_fuzzed_near_valid_tokens_judged_as_the_spec_says(
    fuzz_auth: ClientAuthenticator, token: _NearValid
) -> None:
    """A near-valid token is accepted exactly when the independent reading of the rules accepts it."""
    jti = token.payload.get("jti")
    expected = _spec_accepts(token, replayed=isinstance(jti, str) and jti in _ACCEPTED_JTIS)
    result = _outcome(fuzz_auth, token.authorization)
    if expected:
        assert isinstance(result, VerifiedClient), (token.header, token.payload)
        _ACCEPTED_JTIS.add(str(jti))
    else:
        assert isinstance(result, Unauthorized), (token.header, token.payload)
        assert str(result) == "unauthorized"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        ("not json", "not JSON"),
        ('{"keys": []}', "no usable signing keys"),
        ('{"kty": "EC"}', "not a JWK Set"),
    ],
)
def test_pinned_key_file_is_read_at_start_up(content: str | None, reason: str, tmp_path: Path) -> None:
    """A missing or broken jwks_file stops start-up with one line naming the issuer, the key and the
    problem, instead of a service that starts healthy and then refuses every call."""
    path = tmp_path / "ehr-jwks.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    issuer = TrustedIssuer(iss=ISS, jwks_file=str(path))
    with pytest.raises(ConfigError) as excinfo:
        ClientAuthenticator(make_settings(issuer), replay_cache=MemoryReplay())
    message = str(excinfo.value)
    assert ISS in message
    assert "'jwks_file'" in message
    assert reason in message
    assert "\n" not in message

"""Client JWT checks at their exact edges: the time leeway to the second, RSA keys at 2048 bits, JWKS sizes.

A token is judged against a fixed clock (no wall-clock read); keys come from a JWKS file or a stand-in HTTP
session, so no server is needed. Each edge is tested on both sides: the value that must pass and the one
step that must fail.
"""

from __future__ import annotations

import base64
import json
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.warnings import InsecureKeyLengthWarning

from cds.config import Settings, TrustedIssuer
from cds.errors import OutboundRefused, ServiceUnavailable, Unauthorized
from cds.outbound import address_policy
from cds.web.auth import (
    ClientAuthenticator,
    _fits,
    _JwksCache,
    _JwksError,
    _loggable,
    _parse_jwks,
    _Reject,
    _Source,
)
from cds.web.auth import _Key as _KeyEntry

ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
AUD = f"{BASE}/cds-services/ketamine-order-select"
NOW = 1_795_000_000  # 2026-11-18T09:46:40Z, a fixed instant
LEEWAY = 30
MAX_LIFETIME = 3600


class _Replay:
    def __init__(self) -> None:
        self.ttls: dict[str, int] = {}

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        if jti_key in self.ttls:
            return False
        self.ttls[jti_key] = ttl_s
        return True


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_keys() -> dict[int, rsa.RSAPrivateKey]:
    return {
        bits: rsa.generate_private_key(public_exponent=65537, key_size=bits) for bits in (1024, 2047, 2048)
    }


def _jwk(private_key: Any, kid: str) -> dict[str, Any]:
    alg = "ES384" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS384"
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    return jwk


@pytest.fixture
def make_auth(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, rsa_keys: dict[int, rsa.RSAPrivateKey]
) -> Callable[[], tuple[ClientAuthenticator, _Replay]]:
    jwks = tmp_path / "jwks.json"
    keys = [_jwk(ec_key, "ec"), *(_jwk(key, f"rsa-{bits}") for bits, key in rsa_keys.items())]
    jwks.write_text(json.dumps({"keys": keys}), encoding="utf-8")

    def build() -> tuple[ClientAuthenticator, _Replay]:
        settings = Settings(
            public_base_url=BASE,
            trusted_issuers=(TrustedIssuer(iss=ISS, jwks_file=str(jwks)),),
            jwt_leeway_s=LEEWAY,
            jwt_max_lifetime_s=MAX_LIFETIME,
        )
        replay = _Replay()
        return ClientAuthenticator(settings, replay_cache=replay, clock=lambda: float(NOW)), replay

    return build


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(private_key: Any, kid: str, **claims: Any) -> str:
    """Signed by hand: PyJWT's encoder would warn about (and so refuse, in this suite) a 1024-bit key."""
    payload = {"iss": ISS, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": str(uuid.uuid4()), **claims}
    alg = "ES384" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS384"
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), private_key)
    return f"Bearer {signing_input}.{_b64(signature)}"


def _accepted(auth: ClientAuthenticator, header: str) -> bool:
    # PyJWT only warns about short RSA keys; the suite turns warnings into errors, which verify() would
    # report as a rejection. Silence it so that only our own key-size check can refuse the key.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        try:
            auth.verify(header, AUD)
        except Unauthorized:
            return False
    return True


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        # expired: rejected only once now is MORE than the leeway past exp. On the edge (exp + leeway ==
        # now) the token passes, one second later than PyJWT's own check (exp <= now - leeway) would allow
        ({"iat": NOW - 400, "exp": NOW - LEEWAY + 1}, True),
        ({"iat": NOW - 400, "exp": NOW - LEEWAY}, True),
        ({"iat": NOW - 400, "exp": NOW - LEEWAY - 1}, False),
        ({"iat": NOW - 400, "exp": NOW - LEEWAY - 0.5}, False),  # half a second past is past
        ({"iat": NOW - 400, "exp": NOW - LEEWAY + 0.5}, True),
        # issued in the future: tolerated up to the leeway, not a second beyond
        ({"iat": NOW + LEEWAY, "exp": NOW + 300}, True),
        ({"iat": NOW + LEEWAY + 1, "exp": NOW + 300}, False),
        # not before: the same leeway
        ({"nbf": NOW + LEEWAY}, True),
        ({"nbf": NOW + LEEWAY + 1}, False),
        # lifetime: exactly the maximum passes; one second more does not
        ({"iat": NOW, "exp": NOW + MAX_LIFETIME}, True),
        ({"iat": NOW, "exp": NOW + MAX_LIFETIME + 1}, False),
        # exp equal to iat is a (useless but) consistent token; exp before iat is not
        ({"iat": NOW, "exp": NOW}, True),
        ({"iat": NOW, "exp": NOW - 1}, False),
    ],
)
def test_time_checks_at_the_exact_leeway(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    ec_key: ec.EllipticCurvePrivateKey,
    claims: dict[str, float],
    accepted: bool,
) -> None:
    auth, _ = make_auth()
    assert _accepted(auth, _token(ec_key, "ec", **claims)) is accepted


@pytest.mark.parametrize(
    ("exp", "ttl"), [(NOW + 300, 300 + LEEWAY), (NOW - LEEWAY, 1), (NOW + 1, 1 + LEEWAY)]
)
def test_replay_memory_lasts_the_rest_of_the_token_life_plus_leeway(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    ec_key: ec.EllipticCurvePrivateKey,
    exp: int,
    ttl: int,
) -> None:
    auth, replay = make_auth()
    header = _token(ec_key, "ec", iat=NOW - 60, exp=exp, jti="jti-1")
    assert _accepted(auth, header)
    assert replay.ttls == {f"{ISS}|jti-1": ttl}
    assert not _accepted(auth, header)  # the same jti again is a replay


@pytest.mark.parametrize(("bits", "accepted"), [(2048, True), (2047, False), (1024, False)])
def test_rsa_keys_below_2048_bits_are_refused(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    rsa_keys: dict[int, rsa.RSAPrivateKey],
    bits: int,
    accepted: bool,
) -> None:
    auth, _ = make_auth()
    assert _accepted(auth, _token(rsa_keys[bits], f"rsa-{bits}")) is accepted


# -- the key set and key fit, directly ---------------------------------------------------------------


def test_jwks_keeps_only_usable_public_signing_keys(
    ec_key: ec.EllipticCurvePrivateKey, rsa_keys: dict[int, rsa.RSAPrivateKey]
) -> None:
    good = _jwk(ec_key, "good")
    no_use = {k: v for k, v in _jwk(rsa_keys[2048], "no-use").items() if k != "use"}  # "sig" by default
    private = {**_jwk(ec_key, "private"), "d": "AAAA"}
    junk: list[Any] = [
        "not an object",
        {k: v for k, v in good.items() if k != "kid"},
        {**good, "kid": ""},
        {**good, "kid": 7},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "symmetric"},
        private,
        {**good, "kid": "encryption", "use": "enc"},
        {**good, "kid": "hmac-alg", "alg": "HS256"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "broken"},
    ]
    keyset = _parse_jwks(json.dumps({"keys": [*junk, good, no_use]}).encode(), fetched_at=5.0)
    assert sorted(keyset.keys) == ["good", "no-use"]
    assert keyset.fetched_at == 5.0
    assert [k.declared_alg for k in keyset.keys["good"]] == [None]


def test_jwks_keeps_every_key_under_one_kid_and_the_declared_alg(ec_key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    keys = [{**_jwk(other, "rotating"), "alg": "ES384"}, _jwk(ec_key, "rotating")]
    keyset = _parse_jwks(json.dumps({"keys": keys}).encode(), fetched_at=0.0)
    assert [k.declared_alg for k in keyset.keys["rotating"]] == ["ES384", None]


@pytest.mark.parametrize(
    "raw", [b"[]", b'{"keys": {}}', b"{}", b"not json", b'{"keys": []}', b'{"keys": [{"kty": "oct"}]}']
)
def test_jwks_without_usable_keys_is_an_error(raw: bytes) -> None:
    with pytest.raises(_JwksError):
        _parse_jwks(raw, fetched_at=0.0)


def test_key_fits_only_its_algorithm(
    ec_key: ec.EllipticCurvePrivateKey, rsa_keys: dict[int, rsa.RSAPrivateKey]
) -> None:
    p384 = _KeyEntry(ec_key.public_key(), None)
    p256 = _KeyEntry(ec.generate_private_key(ec.SECP256R1()).public_key(), None)
    rsa2048 = _KeyEntry(rsa_keys[2048].public_key(), None)
    assert _fits(p384, "ES384")
    assert not _fits(p384, "ES256")  # wrong curve
    assert _fits(p256, "ES256")
    assert not _fits(rsa2048, "ES384")  # an RSA key has no curve: refused, not an error
    assert _fits(rsa2048, "RS384")
    assert _fits(rsa2048, "PS256")
    assert not _fits(p384, "RS384")
    assert not _fits(p384, "HS256")  # never an HMAC, whatever the key
    assert not _fits(_KeyEntry(ec_key.public_key(), "ES512"), "ES384")  # the JWK's own alg disagrees
    assert _fits(_KeyEntry(ec_key.public_key(), "ES384"), "ES384")


def test_rotated_key_under_the_same_kid_is_tried_after_the_old_one(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    old = ec.generate_private_key(ec.SECP384R1())
    jwks = tmp_path / "rotating.json"
    jwks.write_text(json.dumps({"keys": [_jwk(old, "ec"), _jwk(ec_key, "ec")]}), encoding="utf-8")
    settings = Settings(
        public_base_url=BASE,
        trusted_issuers=(TrustedIssuer(iss=ISS, jwks_file=str(jwks)),),
        jwt_leeway_s=LEEWAY,
        jwt_max_lifetime_s=MAX_LIFETIME,
    )
    auth = ClientAuthenticator(settings, replay_cache=_Replay(), clock=lambda: float(NOW))
    assert _accepted(auth, _token(ec_key, "ec"))
    assert _accepted(auth, _token(old, "ec"))


def test_claims_we_do_not_check_do_not_matter(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """`sub` is not ours to judge (a number there is odd, not a reason to refuse the EHR)."""
    auth, _ = make_auth()
    assert _accepted(auth, _token(ec_key, "ec", sub=12345))


def test_signature_that_is_not_base64_is_malformed(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth, _ = make_auth()
    head, payload, _signature = _token(ec_key, "ec").split(".")
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(auth, f"{head}.{payload}.A")  # one base64 character cannot be decoded
    assert [r.reason for r in caplog.records if hasattr(r, "reason")] == ["malformed_token"]


# -- what a rejection logs, and the reasons at each header and claim check -------------------------------


def _reasons(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str, str]]:
    return [
        (r.reason, r.iss, r.kid, r.jti)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "cds.web.auth" and hasattr(r, "reason")
    ]


def test_rejection_log_names_iss_kid_and_jti_only(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth, _ = make_auth()
    other = ec.generate_private_key(ec.SECP384R1())
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(auth, _token(other, "ec", jti="jti-logged"))  # signed by the wrong key
    assert _reasons(caplog) == [("bad_signature", ISS, "ec", "jti-logged")]
    message = next(r.getMessage() for r in caplog.records if hasattr(r, "reason"))
    assert message == f"client JWT rejected: reason=bad_signature iss={ISS} kid=ec jti=jti-logged"


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("plain", "plain"),
        ("", "-"),
        (None, "-"),
        (42, "-"),
        ("quo\"te's", "quo?te?s"),
        ("X-Ray 'X'", "X-Ray ?X?"),  # only quotes and unprintables are replaced
        ("tab\there\n", "tab?here?"),
        ("x" * 128, "x" * 128),
        ("x" * 129, "x" * 128 + "..."),
    ],
)
def test_claim_values_are_logged_printable_and_bounded(value: object, logged: str) -> None:
    assert _loggable(value) == logged


@pytest.mark.parametrize(
    ("header", "claims", "reason"),
    [
        # PyJWT's parser already refuses these, before our own unsupported-header check is reached
        ({"crit": ["exp"]}, {}, "malformed_token"),
        ({"b64": False}, {}, "malformed_token"),
        ({}, {"iss": 123}, "missing_iss"),
        ({}, {"iss": ""}, "missing_iss"),
        ({}, {"iss": "https://other.example.org"}, "untrusted_iss"),
        ({"typ": "JOSE"}, {}, "bad_typ"),
        ({"kid": ""}, {}, "missing_kid"),
        ({}, {"jti": "j" * 256}, "missing_jti"),
    ],
)
def test_each_check_rejects_for_its_own_reason(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    header: dict[str, Any],
    claims: dict[str, Any],
    reason: str,
) -> None:
    auth, _ = make_auth()
    token = _token(ec_key, "ec", **claims)
    if header:
        _, payload, _sig = token.removeprefix("Bearer ").split(".")
        full = {"alg": "ES384", "typ": "JWT", "kid": "ec", **header}
        signing_input = f"{_b64(json.dumps(full).encode())}.{payload}"
        signature = jwt.get_algorithm_by_name("ES384").sign(signing_input.encode(), ec_key)
        token = f"Bearer {signing_input}.{_b64(signature)}"
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(auth, token)
    assert [r[0] for r in _reasons(caplog)] == [reason]


def test_longest_allowed_jti_and_odd_tenant(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth, _ = make_auth()
    client = auth.verify(_token(ec_key, "ec", jti="j" * 255, tenant=5), AUD)
    assert (client.jti, client.kid, client.tenant) == ("j" * 255, "ec", None)  # a non-string tenant: none
    assert auth.verify(_token(ec_key, "ec", tenant="t1"), AUD).tenant == "t1"


# -- dependencies that fail ---------------------------------------------------------------------------


class _DownReplay:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        raise self.error


def _auth_with(jwks_file: Path, replay: Any) -> ClientAuthenticator:
    settings = Settings(
        public_base_url=BASE,
        trusted_issuers=(TrustedIssuer(iss=ISS, jwks_file=str(jwks_file)),),
        jwt_leeway_s=LEEWAY,
        jwt_max_lifetime_s=MAX_LIFETIME,
    )
    return ClientAuthenticator(settings, replay_cache=replay, clock=lambda: float(NOW))


def test_replay_cache_down_is_a_503_not_a_401(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(ec_key, "ec")]}), encoding="utf-8")
    auth = _auth_with(jwks, _DownReplay(ServiceUnavailable("replay cache down")))
    with caplog.at_level("WARNING", logger="cds.web.auth"), pytest.raises(ServiceUnavailable):
        auth.verify(_token(ec_key, "ec"), AUD)
    assert [r.getMessage() for r in caplog.records if r.name == "cds.web.auth"] == [
        "replay cache unavailable: call refused with 503"
    ]
    # any other failure of the cache fails closed: the token is refused, never let through
    broken = _auth_with(jwks, _DownReplay(RuntimeError("boom")))
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(broken, _token(ec_key, "ec"))
    assert _reasons(caplog)[-1][0] == "replay_cache_unavailable"


@pytest.mark.parametrize("content", [None, b" " * (256 * 1024) + b'{"keys": []}'])
def test_unreadable_or_oversized_jwks_file_refuses_every_token(
    tmp_path: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    content: bytes | None,
) -> None:
    """The file was good at start-up (it is checked then) and went missing or grew past the limit later."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(ec_key, "ec")]}), encoding="utf-8")
    auth = _auth_with(jwks, _Replay())
    if content is None:
        jwks.unlink()
    else:
        jwks.write_bytes(content)
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(auth, _token(ec_key, "ec"))
    assert [r[0] for r in _reasons(caplog)] == ["jwks_unavailable"]


def test_jwks_file_just_under_the_size_limit_is_read(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    body = json.dumps({"keys": [_jwk(ec_key, "ec")]}).encode()
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(b" " * (256 * 1024 - len(body)) + body)  # exactly 256 KiB, its last byte needed
    assert _accepted(_auth_with(jwks, _Replay()), _token(ec_key, "ec"))


# -- fetching a key set over HTTP, with a stand-in session ------------------------------------------

JWKS_URL = "https://keys.ehr.example.org/jwks.json"
JWKS_LIMIT = 256 * 1024


class _Response:
    def __init__(self, body: bytes, chunk: int = 16 * 1024) -> None:
        self.status_code = 200
        self.chunk_size: int | None = None
        self._chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        self.chunk_size = chunk_size
        yield from self._chunks


class _Session:
    """Answers every GET with `answer` (a body, or an exception to raise); records the URLs and close()."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.urls: list[str] = []
        self.options: list[dict[str, Any]] = []
        self.responses: list[_Response] = []
        self.closed = False

    def get(self, url: str, **options: Any) -> _Response:
        self.urls.append(url)
        self.options.append(options)
        if isinstance(self.answer, Exception):
            raise self.answer
        self.responses.append(_Response(self.answer))
        return self.responses[-1]

    def close(self) -> None:
        self.closed = True


def _fetching_auth(session: _Session, **more: Any) -> ClientAuthenticator:
    settings = Settings(
        public_base_url=BASE,
        trusted_issuers=(TrustedIssuer(iss=ISS, jwks_url=JWKS_URL),),
        jwt_leeway_s=LEEWAY,
        jwt_max_lifetime_s=MAX_LIFETIME,
        **more,
    )
    return ClientAuthenticator(
        settings,
        replay_cache=_Replay(),
        session=session,  # type: ignore[arg-type]
        clock=lambda: float(NOW),
    )


def _padded_jwks(ec_key: ec.EllipticCurvePrivateKey, size: int) -> bytes:
    body = json.dumps({"keys": [_jwk(ec_key, "ec")]}).encode()
    return b" " * (size - len(body)) + body  # leading white space: still the same JSON


def test_a_fetched_key_set_of_exactly_the_size_limit_is_read(ec_key: ec.EllipticCurvePrivateKey) -> None:
    at_limit = _Session(_padded_jwks(ec_key, JWKS_LIMIT))
    assert _accepted(_fetching_auth(at_limit), _token(ec_key, "ec"))
    assert at_limit.urls == [JWKS_URL]


def test_a_key_set_is_fetched_as_a_jwk_set_streamed_without_redirects_within_the_timeout(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    # streamed and read 16 KiB at a time, so the size limit and the deadline are checked while it arrives
    session = _Session(_padded_jwks(ec_key, 1000))
    assert _accepted(_fetching_auth(session, jwks_timeout_s=4.0), _token(ec_key, "ec"))
    assert session.options == [
        {
            "timeout": 4.0,
            "stream": True,
            "allow_redirects": False,
            "headers": {"Accept": "application/jwk-set+json, application/json"},
        }
    ]
    assert [response.chunk_size for response in session.responses] == [16 * 1024]


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        (lambda key: _padded_jwks(key, JWKS_LIMIT + 1), "larger than the JWKS size limit"),  # one byte more
        (lambda key: OutboundRefused("private address 10.0.0.5"), "not fetched: private address 10.0.0.5"),
    ],
)
def test_a_key_set_that_cannot_be_fetched_refuses_the_token(
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    answer: Callable[[ec.EllipticCurvePrivateKey], bytes | Exception],
    logged: str,
) -> None:
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(_fetching_auth(_Session(answer(ec_key))), _token(ec_key, "ec"))
    assert [r[0] for r in _reasons(caplog)] == ["jwks_unavailable"]
    assert any(logged in r.getMessage() for r in caplog.records)


def test_an_unexpected_failure_while_verifying_is_a_401_naming_it(
    ec_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _Session(RuntimeError("session in a bad state"))
    with caplog.at_level("WARNING", logger="cds.web.auth"), pytest.raises(Unauthorized):
        _fetching_auth(broken).verify(_token(ec_key, "ec", jti="jti-7"), AUD)
    assert _reasons(caplog) == [("internal_error:RuntimeError", ISS, "ec", "jti-7")]


def test_close_leaves_a_session_it_was_given_open() -> None:
    given = _Session(b"")
    auth = _fetching_auth(given)
    auth.close()
    assert not given.closed  # the caller owns it (and may share it)


# -- the key-set cache, with a stand-in loader and clock --------------------------------------------

CACHE_S = 600.0  # the cache period these tests give; refetches are at least 10 s apart (JWKS_MIN_REFETCH_S)
SOURCE = _Source("url", JWKS_URL)


class _Loader:
    """Serves `answers` in turn (a body, or a _JwksError to raise); records each load."""

    def __init__(self, *answers: bytes | _JwksError) -> None:
        self.answers = list(answers)
        self.loads = 0

    def __call__(self, source: _Source) -> bytes:
        self.loads += 1
        answer = self.answers[min(self.loads, len(self.answers)) - 1]
        if isinstance(answer, _JwksError):
            raise answer
        return answer


def _key_set(ec_key: ec.EllipticCurvePrivateKey, kid: str = "ec") -> bytes:
    return json.dumps({"keys": [_jwk(ec_key, kid)]}).encode()


def _cache(loader: _Loader, now: list[float]) -> _JwksCache:
    return _JwksCache(loader, CACHE_S, lambda: now[0])


def test_a_cached_key_set_serves_its_kids_until_the_cache_period_ends(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    loader, now = _Loader(_key_set(ec_key)), [1000.0]
    cache = _cache(loader, now)
    assert len(cache.keys_for(SOURCE, "ec")) == 1
    for at, loads in ((1011.0, 1), (1000.0 + CACHE_S - 1, 1), (1000.0 + CACHE_S, 2)):
        now[0] = at  # past the refetch interval, within the period: still cached; at its end: fetched
        assert len(cache.keys_for(SOURCE, "ec")) == 1
        assert loader.loads == loads, at


def test_an_unknown_kid_refetches_once_the_interval_has_passed_to_the_second(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    loader, now = _Loader(_key_set(ec_key)), [1000.0]
    cache = _cache(loader, now)
    cache.keys_for(SOURCE, "ec")
    for at, loads in ((1009.0, 1), (1010.0, 2)):  # 9 s after the last fetch: not again; 10 s: again
        now[0] = at
        with pytest.raises(_Reject):
            cache.keys_for(SOURCE, "rotated")
        assert loader.loads == loads, at


@pytest.mark.parametrize(
    ("age", "kept"), [(2 * CACHE_S - 1, True), (2 * CACHE_S, False), (2.5 * CACHE_S, False)]
)
def test_keys_are_kept_through_a_failed_refresh_for_one_more_period_only(
    ec_key: ec.EllipticCurvePrivateKey, age: float, kept: bool
) -> None:
    loader, now = _Loader(_key_set(ec_key), _JwksError("HTTP 503")), [1000.0]
    cache = _cache(loader, now)
    cache.keys_for(SOURCE, "ec")
    now[0] = 1000.0 + age
    if kept:
        assert len(cache.keys_for(SOURCE, "ec")) == 1
    else:
        with pytest.raises(_Reject):
            cache.keys_for(SOURCE, "ec")
    assert loader.loads == 2


def test_a_refresh_that_finds_the_set_renewed_meanwhile_does_not_fetch_again(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    """A caller that waited for the lock while another fetched (it saw no set, one is there now) takes it."""
    loader, now = _Loader(_key_set(ec_key)), [1000.0]
    cache = _cache(loader, now)
    fetched = cache._refresh(SOURCE, seen=None)
    now[0] = 1100.0
    assert cache._refresh(SOURCE, seen=None) is fetched
    assert loader.loads == 1


def test_a_fetch_holds_its_own_source_s_lock_and_no_other(ec_key: ec.EllipticCurvePrivateKey) -> None:
    other = _Source("url", "https://keys.other.example.org/jwks.json")
    held: list[tuple[bool, bool]] = []

    def load(source: _Source) -> bytes:
        held.append((cache._lock_for(SOURCE).locked(), cache._lock_for(other).locked()))
        return _key_set(ec_key)

    cache = _JwksCache(load, CACHE_S, lambda: 1000.0)
    cache.keys_for(SOURCE, "ec")
    assert held == [(True, False)]


@pytest.mark.parametrize(
    ("length", "reason"), [(16 * 1024, "malformed_token"), (16 * 1024 + 1, "token_too_large")]
)
def test_an_authorization_header_of_16_kib_is_read_and_one_character_more_is_not(
    make_auth: Callable[[], tuple[ClientAuthenticator, _Replay]],
    caplog: pytest.LogCaptureFixture,
    length: int,
    reason: str,
) -> None:
    auth, _ = make_auth()
    with caplog.at_level("WARNING", logger="cds.web.auth"):
        assert not _accepted(auth, "Bearer " + "a" * (length - len("Bearer ")))
    assert [r[0] for r in _reasons(caplog)] == [reason]


def test_an_authenticator_closes_the_session_it_made_which_obeys_the_address_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[object, _Session]] = []

    def outbound_session(policy: object) -> _Session:
        made.append((policy, _Session(b"")))
        return made[-1][1]

    monkeypatch.setattr("cds.web.auth.outbound_session", outbound_session)
    settings = Settings(public_base_url=BASE, trusted_issuers=(TrustedIssuer(iss=ISS, jwks_url=JWKS_URL),))
    auth = ClientAuthenticator(settings, replay_cache=_Replay(), clock=lambda: float(NOW))
    [(policy, session)] = made
    assert policy == address_policy(settings)
    auth.close()
    assert session.closed


@pytest.mark.parametrize(("arrives_after", "accepted"), [(4.0, True), (4.001, False)])
def test_a_key_set_must_arrive_within_the_timeout_to_the_millisecond(
    monkeypatch: pytest.MonkeyPatch, ec_key: ec.EllipticCurvePrivateKey, arrives_after: float, accepted: bool
) -> None:
    # the fetch starts at 100 s on the monotonic clock; each piece of the body comes at 100 + arrives_after
    readings = iter([100.0])
    monkeypatch.setattr(
        "cds.web.auth.time", SimpleNamespace(monotonic=lambda: next(readings, 100.0 + arrives_after))
    )
    session = _Session(_padded_jwks(ec_key, 1000))
    assert _accepted(_fetching_auth(session, jwks_timeout_s=4.0), _token(ec_key, "ec")) is accepted

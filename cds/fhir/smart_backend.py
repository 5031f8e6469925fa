"""Access tokens for the service's own calls to a FHIR server: a bearer token, or SMART Backend Services.

SMART Backend Services (client_credentials grant, authenticated with a `private_key_jwt` assertion signed by
the site's key): the token endpoint comes from the server's `.well-known/smart-configuration` unless it is
configured; the assertion lives five minutes at most and carries a fresh `jti`; the access token is reused
until shortly before it expires and then fetched again. One `TokenSource` is shared by every worker thread.

Nothing here logs or repeats a token, an assertion or a response body: errors name the step and the HTTP
status only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import jwt
import requests

from cds.errors import FhirError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGORITHMS = ("RS384", "ES384")  # the two SMART Backend Services requires servers to support
ASSERTION_LIFETIME_S = 300  # the most SMART allows
REFRESH_MARGIN_S = 60.0  # fetch a new token this long before the old one expires


class TokenSource(Protocol):
    def token(self) -> str: ...


class AuthFailed(FhirError):
    """The FHIR server's authorisation server did not give us a token."""

    issue_code = "security"


@dataclass(frozen=True)
class StaticToken:
    """A bearer token given by the operator (command line or environment)."""

    value: str

    def token(self) -> str:
        return self.value


@dataclass(frozen=True)
class SmartClientConfig:
    client_id: str
    private_key_pem: str = ""  # the site's private key (PEM); never logged
    key_id: str = ""  # `kid` of the matching public key in the JWKS registered with the server
    algorithm: str = "RS384"
    scope: str = "system/*.read"
    token_url: str | None = None  # discovered from .well-known/smart-configuration when None


class SmartBackendToken:
    """client_credentials + private_key_jwt, with the token cached until shortly before it expires."""

    def __init__(
        self,
        fhir_base_url: str,
        config: SmartClientConfig,
        *,
        session: requests.Session,
        url_allowed: Callable[[str], bool],
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,  # for the token's expiry only
    ) -> None:
        if config.algorithm not in SIGNING_ALGORITHMS:
            raise AuthFailed(f"SMART signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}")
        self._base = fhir_base_url.rstrip("/")
        self._config = config
        self._session = session
        self._url_allowed = url_allowed
        self._timeout = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._token_url = config.token_url
        self.tokens_fetched = 0  # for tests and the summary; never the token itself

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - REFRESH_MARGIN_S:
                self._token, lifetime = self._fetch()
                self._expires_at = self._clock() + lifetime
                self.tokens_fetched += 1
            return self._token

    # ------------------------------------------------------------------ internals

    def _endpoint(self) -> str:
        if self._token_url is None:
            document = self._json(
                self._session.get,
                f"{self._base}/.well-known/smart-configuration",
                "read the server's SMART configuration",
                headers={"Accept": "application/json"},
            )
            endpoint = document.get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                raise AuthFailed("the server's SMART configuration names no token_endpoint")
            self._token_url = urljoin(self._base + "/", endpoint)
        if not self._url_allowed(self._token_url):
            raise AuthFailed(
                "the SMART token endpoint must use https (or be on the allowed FHIR server's own host)"
            )
        return self._token_url

    def _assertion(self, audience: str) -> str:
        now = int(time.time())  # checked by the server against its clock: always the wall clock
        claims = {
            "iss": self._config.client_id,
            "sub": self._config.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": str(uuid.uuid4()),
        }
        headers = {"typ": "JWT", **({"kid": self._config.key_id} if self._config.key_id else {})}
        try:
            return jwt.encode(
                claims, self._config.private_key_pem, algorithm=self._config.algorithm, headers=headers
            )
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise AuthFailed(
                f"cannot sign the SMART client assertion with the configured key ({exc})"
            ) from None

    def _fetch(self) -> tuple[str, float]:
        endpoint = self._endpoint()
        form = {
            "grant_type": "client_credentials",
            "scope": self._config.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(endpoint),
        }
        body = self._json(self._session.post, endpoint, "obtain a SMART access token", data=form)
        token = body.get("access_token")
        token_type = body.get("token_type")
        if not isinstance(token, str) or not token:
            raise AuthFailed("the SMART token response carries no access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthFailed("the SMART token response is not a bearer token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        return token, lifetime

    def _json(self, method: Callable[..., requests.Response], url: str, what: str, **kwargs: Any) -> Any:
        if urlsplit(url).scheme not in {"http", "https"}:
            raise AuthFailed(f"cannot {what}: not an http(s) URL")
        try:
            response = method(url, timeout=self._timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise AuthFailed(f"cannot {what}: {type(exc).__name__}") from None
        with response:
            if response.status_code != 200:
                raise AuthFailed(f"cannot {what}: HTTP {response.status_code}")
            try:
                document = response.json()
            except ValueError:
                raise AuthFailed(f"cannot {what}: the answer is not JSON") from None
        if not isinstance(document, dict):
            raise AuthFailed(f"cannot {what}: the answer is not a JSON object")
        return document

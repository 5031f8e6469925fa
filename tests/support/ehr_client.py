"""A CDS Hooks client as an EHR runs one, for contract tests: real HTTP, real signed tokens.

    with serving(app) as base:                  # the app on a free loopback port, in a thread
        ehr = EhrClient.new(tmp_path, base)     # an ES384 key, its JWKS file, and the issuer URL
        ehr.post("/cds-services/x", body)       # signed token (kid + jku headers), JSON body

Tokens are what real clients send (the CDS Hooks sandbox, Epic): ES384, `typ` JWT, `kid`, and a `jku`
header naming the client's public JWKS URL; `aud` is the exact URL called. Every token is registered in
tests.support.logs.SENSITIVE so the log-hygiene check fails if one is ever logged.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from werkzeug.serving import make_server

from tests.support.constants import NOW
from tests.support.logs import SENSITIVE

EHR_ISSUER = "https://ehr.example.org/cds-client"
EHR_JKU = "https://ehr.example.org/.well-known/jwks.json"  # never reachable here: pinned keys ignore it


@contextlib.contextmanager
def serving(app: Flask) -> Iterator[str]:
    """The app behind a real threaded HTTP server on 127.0.0.1; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        app.extensions["ketamine_cds"].flush()


@dataclass
class EhrClient:
    """Signs like an EHR; `audience_base` is the service's public base URL (the `aud` prefix). Its tokens
    are issued at `clock()`: the suite's pinned instant, the one the test apps judge them by."""

    key: ec.EllipticCurvePrivateKey
    kid: str
    jwks_file: Path
    service_url: str
    audience_base: str
    iss: str = EHR_ISSUER
    jku: str | None = EHR_JKU
    clock: Callable[[], datetime] = lambda: NOW

    @classmethod
    def new(cls, folder: Path, service_url: str, audience_base: str | None = None) -> EhrClient:
        key = ec.generate_private_key(ec.SECP384R1())
        kid = "ehr-" + uuid.uuid4().hex[:12]
        jwk = jwt.get_algorithm_by_name("ES384").to_jwk(key.public_key(), as_dict=True)
        jwk.update(kid=kid, use="sig", alg="ES384")
        path = folder / f"{kid}-jwks.json"
        path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        return cls(key, kid, path, service_url, audience_base or service_url)

    def token(self, path: str) -> str:
        now = int(self.clock().timestamp())
        claims = {
            "iss": self.iss,
            "sub": "ehr-client",
            "aud": self.audience_base.rstrip("/") + path,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        headers: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        if self.jku:
            headers["jku"] = self.jku
        token = jwt.encode(claims, self.key, algorithm="ES384", headers=headers)
        SENSITIVE.add(token)
        return token

    def headers(self, path: str, origin: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token(path)}"}
        SENSITIVE.add(headers["Authorization"])
        if origin:
            headers["Origin"] = origin
        return headers

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.service_url + path, headers=self.headers(path), timeout=30, **kwargs)

    def post(self, path: str, body: Any, origin: str | None = None) -> requests.Response:
        return requests.post(
            self.service_url + path, json=body, headers=self.headers(path, origin), timeout=60
        )

"""CORS for browser-based EHRs: an origin allowlist, preflight on every CDS route.

Hand-written rather than a dependency: the policy is five headers, and keeping it here makes the
allowlist explicit and testable. Development mode allows every origin, so a browser-based CDS Hooks client
on another port works against `make run` without configuration (and start-up says so); production allows
only `KETAMINE_CDS_CORS_ORIGINS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request, Response

# What CDS Hooks clients send with a call: the JWT, and the JSON body's media type.
ALLOWED_HEADERS = "Authorization, Content-Type"
ALLOWED_METHODS = "GET, POST, OPTIONS"
ANY_ORIGIN = "*"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[str]

    @classmethod
    def for_mode(cls, origins: tuple[str, ...], *, dev_mode: bool) -> CorsPolicy:
        return cls(frozenset({ANY_ORIGIN}) if dev_mode else frozenset(origins))

    @property
    def any_origin(self) -> bool:
        return ANY_ORIGIN in self.origins

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.origins)

    def preflight(self, request: Request) -> Response:
        response = Response(status=204)
        if self.allows(request.headers.get("Origin")):
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    def decorate(self, request: Request, response: Response) -> None:
        origin = request.headers.get("Origin")
        if self.allows(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin  # echoed: never "*" with a token
            response.headers.add("Vary", "Origin")

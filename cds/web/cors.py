"""CORS for browser-based EHRs: an origin allowlist, preflight on every CDS route.

Hand-written rather than a dependency: the policy is five headers, and keeping it here makes the
allowlist explicit and testable.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request, Response

ALLOWED_HEADERS = "Authorization, Content-Type"
ALLOWED_METHODS = "GET, POST, OPTIONS"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[str]

    def allows(self, origin: str | None) -> bool:
        return origin is not None and ("*" in self.origins or origin in self.origins)

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
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.add("Vary", "Origin")

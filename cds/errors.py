"""The service's one exception tree, and the one place it becomes HTTP.

    CdsError                      500  anything we did not anticipate, answered without detail
     +-- ClientError              4xx  the caller sent something we cannot use
     |    +-- BadRequest          400  malformed JSON, schema violation, hook does not match the service
     |    +-- Unauthorized        401  bad or missing client JWT (never with detail)
     |    +-- NotFound            404  unknown service id
     |    +-- MethodNotAllowed    405
     |    +-- PayloadTooLarge     413  body over the configured size
     |    +-- UnsupportedMedia    415  body is not application/json
     |    +-- PreconditionFailed  412  data the rules need could not be obtained (CDS Hooks 2.0 sec. 412)
     +-- ServiceUnavailable       503  a dependency (database, Redis) is down: try again (Retry-After)
     +-- ConfigError                   invalid configuration or knowledge: stops start-up, never per request
     +-- FhirError                     the EHR's FHIR server failed us; mapped to 412 by the caller
     +-- OutboundRefused               a connection to an address we do not connect to (private, loopback...);
                                       raised before connecting, turned into FhirError or a JWKS failure

Every HTTP error carries a FHIR OperationOutcome whose `expression` names the failing JSON path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: `code` from the FHIR issue-type value set, `path` a JSON path."""

    code: str
    diagnostics: str
    path: str | None = None
    severity: str = "error"


class CdsError(Exception):
    status = 500
    issue_code = "exception"

    def __init__(self, message: str, *, issues: Sequence[Issue] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.issues: tuple[Issue, ...] = tuple(issues) if issues else (Issue(self.issue_code, message),)


class ClientError(CdsError):
    status = 400
    issue_code = "invalid"


class BadRequest(ClientError):
    status = 400
    issue_code = "invalid"


class Unauthorized(ClientError):
    status = 401
    issue_code = "security"


class NotFound(ClientError):
    status = 404
    issue_code = "not-found"


class MethodNotAllowed(ClientError):
    status = 405
    issue_code = "not-supported"


class PayloadTooLarge(ClientError):
    status = 413
    issue_code = "too-costly"


class UnsupportedMedia(ClientError):
    status = 415
    issue_code = "not-supported"


class PreconditionFailed(ClientError):
    status = 412
    issue_code = "incomplete"


class ServiceUnavailable(CdsError):
    """A dependency we need for this call is down; the caller should retry after `retry_after_s`.

    Never a 401: the caller's credentials were not the problem.
    """

    status = 503
    issue_code = "transient"
    retry_after_s = 5


class ConfigError(CdsError):
    """Invalid configuration or knowledge files. Raised at start-up only."""


class UpstreamUnavailable(CdsError):
    """A server this service depends on (the worklist's FHIR server) could not answer what was asked."""

    status = 502
    issue_code = "transient"


class FhirError(CdsError):
    """The FHIR server could not give us what we asked for (timeout, HTTP error, bad body, over a limit)."""

    issue_code = "transient"


class OutboundRefused(CdsError):
    """An outbound connection was refused by the address rules (cds/outbound.py); nothing was sent."""

    issue_code = "security"


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """A FHIR R4 OperationOutcome for `issues` (no empty values, per CDS Hooks' no-null rule)."""
    rendered: list[dict[str, Any]] = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": issue.diagnostics,
        }
        if issue.path:
            item["expression"] = [issue.path]
        rendered.append(item)
    return {"resourceType": "OperationOutcome", "issue": rendered}

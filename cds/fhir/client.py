"""A small, defensive FHIR R4 client for the data the EHR did not prefetch.

One client serves one CDS request: it shares a deadline and a byte budget across all its calls, and it
takes its `requests.Session` from the caller (tests point it at a real local server). Its calls may run on
several threads at once (the prefetch fallback fetches keys concurrently): the counters are locked, and the
session's connection pool hands each concurrent call its own connection.

Security rules, all enforced here:

* the bearer token goes on every call, and only to URLs under `base_url` (same scheme, host, port and path
  prefix). A `next` link or reference pointing anywhere else is refused before any request is sent;
  redirects are never followed;
* `base_url` must be https unless dev mode, `fhir_allow_http`, or the allowlist says otherwise
  (`InsecureFhirServer`, which the caller answers with 412);
* limits: pages per search, total bytes read (counted while streaming), and a deadline that clips every
  connect/read timeout;
* error messages name the resource type and what went wrong, never the URL (it holds patient ids), the token
  or any response body. Nothing here logs bodies or tokens.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit, urlunsplit

import requests
import urllib3
import urllib3.exceptions
import urllib3.response

from cds.config import Settings, http_allowed
from cds.errors import FhirError, OutboundRefused
from cds.fhir.decoding import decode_json

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")
_TYPE_AT_START = re.compile(r"^/?([A-Z][A-Za-z]{1,63})(?:[/?]|$)")
_COUNT_PARAM = re.compile(r"(^|&)_count=\d+(?=&|$)")


class _RedactRequestTargets(logging.Filter):
    """urllib3 logs each request's path and query at DEBUG; FHIR URLs hold patient ids. Keep only the path
    up to the resource type ("/fhir/Condition?patient=123" -> "/fhir/Condition…")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _redact_target(arg) if isinstance(arg, str) and arg.startswith(("/", "http")) else arg
                for arg in record.args
            )
        return True


def _redact_target(target: str) -> str:
    try:
        parts = urlsplit(target)
    except ValueError:
        return "…"
    segments = parts.path.split("/")
    for index, segment in enumerate(segments):
        if segment[:1].isupper():
            kept = "/".join(segments[: index + 1])
            return kept + ("…" if index + 1 < len(segments) or parts.query else "")
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


_URLLIB3_LOG = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _RedactRequestTargets) for f in _URLLIB3_LOG.filters):
    _URLLIB3_LOG.addFilter(_RedactRequestTargets())


class InsecureFhirServer(FhirError):
    """`fhirServer` is not https and plain http is not allowed by the settings."""

    issue_code = "security"


class FhirAccessRefused(FhirError):
    """The call's fhirServer may not be read as asked; answered with 412 without any outbound request."""

    issue_code = "security"


class FhirClient:
    """Reads and searches one FHIR server on behalf of one CDS request."""

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session,
        access_token: str | None,
        settings: Settings,
        deadline: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`deadline` is a reading of `monotonic` (seconds): the moment the whole budget runs out."""
        self._origin, self._base_path = _split_base(base_url)
        self.base_url = f"{self._origin[0]}://{urlsplit(base_url).netloc}{self._base_path}"
        if self._origin[0] != "https" and not http_allowed(self.base_url, settings):
            raise InsecureFhirServer(
                "fhirServer must use https; plain http is accepted only in dev mode, with "
                "KETAMINE_CDS_FHIR_ALLOW_HTTP, or for a server in KETAMINE_CDS_FHIR_SERVER_ALLOWLIST"
            )
        self._session = session
        self._token = access_token or None
        self._settings = settings
        self._deadline = deadline
        self._monotonic = monotonic
        self.bytes_read = 0
        self.requests_sent = 0
        self._counting = threading.Lock()  # concurrent fetches share the byte budget

    # ------------------------------------------------------------------ public API

    def is_under_base(self, url: str) -> bool:
        """True when `url` (absolute) lies under this client's base URL, i.e. may receive the token."""
        return _is_under(url, self._origin, self._base_path)

    def search(self, query: str, *, widen_pages: bool = False) -> list[dict[str, Any]]:
        """Every resource of a search, following `next` links; de-duplicated by (resourceType, id).

        `query` is relative to the base ("Condition?patient=123") or an absolute URL under it (a `next`
        link from a prefetched page). `_count` is added when the query has none; with `widen_pages` (a new
        search, never a server's own link) a smaller `_count` is raised to `fhir_page_size`: every page is
        read anyway, so fewer, larger pages give the same resources in fewer round trips. Entries of
        search mode `outcome` (server warnings) are not returned.
        """
        what = f"{_resource_type(query)} search"
        url: str | None = self._with_count(self._absolute(query, what), widen_pages)
        seen_urls: set[str] = set()
        seen_keys: set[tuple[str, str]] = set()
        resources: list[dict[str, Any]] = []
        pages = 0
        while url is not None:
            if url in seen_urls:
                raise FhirError(f"FHIR server's paging for a {what} loops back to an earlier page")
            if pages >= self._settings.fhir_max_pages:
                raise FhirError(
                    f"{what} needs more than {self._settings.fhir_max_pages} pages "
                    "(KETAMINE_CDS_FHIR_MAX_PAGES); the record is too large to screen in time"
                )
            seen_urls.add(url)
            pages += 1
            status, body = self._get(url, what)
            if status != 200:
                raise FhirError(f"FHIR server answered HTTP {status} to a {what}")
            bundle = _json_object(body, what)
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(f"FHIR server answered a {what} with {_describe(bundle)}, not a Bundle")
            for resource in _bundle_resources(bundle, what):
                key = _identity(resource)
                if key is not None:
                    if key in seen_keys:
                        continue
                    seen_keys.add(key)
                resources.append(resource)
            url = self._next_url(bundle, url, what)
        log.debug("FHIR %s: %d resources in %d pages", what, len(resources), pages)
        return resources

    def read(self, reference: str) -> dict[str, Any] | None:
        """One resource by relative reference ("Medication/123"); None when the server says 404 or 410."""
        match = _READ_REFERENCE.match(reference)
        if match is None:
            raise FhirError("cannot read a resource from a reference that is not of the form Type/id")
        rtype = match.group(1)
        what = f"{rtype} read"
        status, body = self._get(f"{self.base_url}/{reference}", what)
        if status in {404, 410}:
            return None
        if status != 200:
            raise FhirError(f"FHIR server answered HTTP {status} to a {what}")
        resource = _json_object(body, what)
        if resource.get("resourceType") != rtype:
            raise FhirError(f"FHIR server answered a {what} with {_describe(resource)}")
        return resource

    # ------------------------------------------------------------------ internals

    def _absolute(self, query: str, what: str) -> str:
        url = query if urlsplit(query).scheme else f"{self.base_url}/{query.lstrip('/')}"
        if not self.is_under_base(url):
            raise FhirError(f"refused a {what} URL outside the FHIR server's base URL")
        return url

    def _with_count(self, url: str, widen: bool) -> str:
        parts = urlsplit(url)
        size = self._settings.fhir_page_size
        counts = [value for name, value in parse_qsl(parts.query, keep_blank_values=True) if name == "_count"]
        if not counts:
            joiner = "&" if parts.query else "?"
            return f"{url}{joiner}_count={size}"
        if widen and all(value.isdigit() and int(value) < size for value in counts):
            return urlunsplit(parts._replace(query=_COUNT_PARAM.sub(rf"\g<1>_count={size}", parts.query)))
        return url

    def _next_url(self, bundle: Mapping[str, Any], current: str, what: str) -> str | None:
        links = bundle.get("link")
        if not isinstance(links, list):
            return None
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next":
                target = link.get("url")
                if not isinstance(target, str) or not target:
                    raise FhirError(f"FHIR server sent a malformed next link for a {what}")
                absolute = urljoin(current, target)
                if not self.is_under_base(absolute):
                    raise FhirError(
                        f"FHIR server's next link for a {what} points outside its base URL; "
                        "refused (the access token is only sent to the fhirServer)"
                    )
                return absolute
        return None

    def _remaining(self, what: str) -> float:
        remaining = self._deadline - self._monotonic()
        if remaining <= 0:
            raise FhirError(f"FHIR time budget ran out before the {what} finished")
        return remaining

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _get(self, url: str, what: str) -> tuple[int, bytes]:
        """GET `url` (already checked to be under base) within the deadline and byte budget."""
        if not self.is_under_base(url):  # defence in depth: the token never leaves the base URL
            raise FhirError(f"refused a {what} URL outside the FHIR server's base URL")
        remaining = self._remaining(what)
        timeout = (
            min(self._settings.fhir_connect_timeout_s, remaining),
            min(self._settings.fhir_read_timeout_s, remaining),
        )
        with self._counting:
            self.requests_sent += 1
        try:
            response = self._session.get(
                url, headers=self._headers(), timeout=timeout, stream=True, allow_redirects=False
            )
        except requests.Timeout:
            # requests' exception text carries the URL (patient ids): never chain or repeat it
            raise FhirError(f"FHIR server did not answer a {what} in time") from None
        except requests.RequestException as exc:
            raise FhirError(f"could not reach the FHIR server for a {what} ({type(exc).__name__})") from None
        except OutboundRefused as exc:
            raise FhirError(f"refused to connect to the FHIR server for a {what}: {exc.message}") from None
        with response:
            if 300 <= response.status_code < 400:
                raise FhirError(f"FHIR server answered a {what} with a redirect, which is not followed")
            if response.status_code != 200:
                return response.status_code, b""
            body = self._read_body(response, what)
        return response.status_code, body

    def _read_body(self, response: requests.Response, what: str) -> bytes:
        """The body, counted against the byte budget and the deadline while it streams in."""
        limit = self._settings.fhir_max_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit - self.bytes_read:
            raise FhirError(_too_big(what, limit))
        chunks: list[bytes] = []
        try:
            for chunk in _iter_chunks(response):
                with self._counting:
                    self.bytes_read += len(chunk)
                    total = self.bytes_read
                if total > limit:
                    raise FhirError(_too_big(what, limit))
                self._remaining(what)
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if _is_timeout(exc):
                raise FhirError(f"FHIR server did not answer a {what} in time") from None
            raise FhirError(f"FHIR server broke off a {what} ({type(exc).__name__})") from None
        return b"".join(chunks)


# ---------------------------------------------------------------------- helpers


def client_factory_for(
    request: Mapping[str, Any],
    *,
    settings: Settings,
    session: requests.Session,
    deadline: float,
    registered: tuple[str, ...] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Callable[[], FhirClient | None]:
    """A `client_factory` for `cds.fhir.prefetch.gather` built from a CDS Hooks request body.

    `registered` holds the FHIR base URLs the caller's issuer may name (its `fhir_servers`); None means
    any (dev mode, the CLI). `deadline` is a reading of `monotonic`, the clock the clients check it against.
    Returns None when `fhirServer` is missing. Raises, so that the caller's 412
    says why and before any outbound request, `FhirAccessRefused` when the server is not registered for
    the issuer, or when there is no bearer `fhirAuthorization` and the server is not one the operator
    declared open (`open_fhir_servers`; dev mode reads any server without a token, as the CDS Hooks
    sandbox expects), and `InsecureFhirServer` for a plain-http server that the settings do not allow.
    """

    def factory() -> FhirClient | None:
        server = request.get("fhirServer")
        if not isinstance(server, str) or not server:
            return None
        if registered is not None and not under_any(server, registered):
            raise FhirAccessRefused(
                "the fhirServer is not one of the FHIR servers registered for this client's issuer "
                "(fhir_servers in KETAMINE_CDS_TRUSTED_ISSUERS), so the service does not read from it"
            )
        token = _bearer_token(request.get("fhirAuthorization"))
        if token is None and not settings.dev_mode and not under_any(server, settings.open_fhir_servers):
            raise FhirAccessRefused(
                "the request carries no fhirAuthorization bearer token, and its fhirServer is not one the "
                "operator declared open (KETAMINE_CDS_OPEN_FHIR_SERVERS)"
            )
        return FhirClient(
            server,
            session=session,
            access_token=token,
            settings=settings,
            deadline=deadline,
            monotonic=monotonic,
        )

    return factory


def _bearer_token(auth: object) -> str | None:
    if not isinstance(auth, Mapping):
        return None
    token, token_type = auth.get("access_token"), auth.get("token_type")
    if isinstance(token, str) and token and isinstance(token_type, str) and token_type.lower() == "bearer":
        return token
    return None


def _split_base(base_url: str) -> tuple[tuple[str, str, int | None], str]:
    try:
        parts = urlsplit(base_url.strip())
        port = parts.port
    except ValueError:
        raise FhirError("fhirServer is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise FhirError("fhirServer must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise FhirError("fhirServer must not carry credentials, a query or a fragment")
    if any(segment in {".", ".."} for segment in unquote(parts.path).split("/")):
        raise FhirError("fhirServer must not contain '.' or '..' path segments")
    return (scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]), parts.path.rstrip("/")


def _is_under(url: str, origin: tuple[str, str, int | None], base_path: str) -> bool:
    """Same scheme, host and port as the base, and a path at or below its path (whole segments)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if (scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)) != origin:
        return False
    if parts.username is not None or parts.password is not None or parts.fragment:
        return False
    path = parts.path
    if any(segment in {".", ".."} for segment in unquote(path).split("/")):
        return False
    return path == base_path or path.startswith(base_path + "/")


def under_any(url: str, bases: Iterable[str]) -> bool:
    """Does `url` (a fhirServer, say) lie under one of these base URL prefixes (scheme and host exact)?"""
    for base in bases:
        try:
            origin, base_path = _split_base(base)
        except FhirError:
            continue  # configuration is validated at start-up; a bad entry matches nothing
        if _is_under(url, origin, base_path):
            return True
    return False


def _resource_type(query: str) -> str:
    path = urlsplit(query).path
    if urlsplit(query).scheme:
        path = path.rsplit("/", 1)[-1]
    match = _TYPE_AT_START.match(path)
    return match.group(1) if match else "FHIR"


def _iter_chunks(response: requests.Response) -> Iterator[bytes]:
    """Decoded body chunks, each returned as soon as the socket has data.

    `iter_content` blocks until a whole chunk has arrived, so a server that trickles bytes could hold a
    read past the deadline; `read1` returns after one socket read, letting the caller check the clock.
    """
    raw = response.raw
    if not isinstance(raw, urllib3.response.HTTPResponse):
        yield from response.iter_content(chunk_size=_CHUNK)
        return
    while True:
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
        return True
    return any(isinstance(arg, urllib3.exceptions.TimeoutError) for arg in exc.args)


def _too_big(what: str, limit: int) -> str:
    return (
        f"FHIR responses for this request passed the {limit}-byte limit during a {what} "
        "(KETAMINE_CDS_FHIR_MAX_BYTES)"
    )


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = decode_json(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FhirError(f"FHIR server answered a {what} with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise FhirError(f"FHIR server answered a {what} with JSON that is not a FHIR resource")
    return data


def _describe(resource: Mapping[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if rtype == "OperationOutcome":
        return "an OperationOutcome (an error)"
    if isinstance(rtype, str) and re.fullmatch(r"[A-Z][A-Za-z]{1,63}", rtype):
        return f"a {rtype}"
    return "JSON that is not a FHIR resource"


def _bundle_resources(bundle: Mapping[str, Any], what: str) -> Iterator[dict[str, Any]]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError(f"FHIR server answered a {what} with a malformed Bundle")
    for entry in entries:
        if not isinstance(entry, dict):
            raise FhirError(f"FHIR server answered a {what} with a malformed Bundle entry")
        resource = entry.get("resource")
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode == "outcome" or not isinstance(resource, dict):
            continue
        if not isinstance(resource.get("resourceType"), str):
            raise FhirError(f"FHIR server answered a {what} with an entry that is not a FHIR resource")
        if resource["resourceType"] == "OperationOutcome":
            continue
        yield resource


def _identity(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    rid = resource.get("id")
    rtype = resource.get("resourceType")
    if isinstance(rid, str) and rid and isinstance(rtype, str):
        return rtype, rid
    return None

"""Where the service may open connections: public addresses only, unless the operator lists a network.

Every outbound request (FHIR reads, JWKS fetches) goes through a session from `outbound_session`. Its
connections resolve the host name once, check every address it resolves to, and connect to that checked
address; TLS still verifies the certificate for the host name (SNI and hostname checks use the name, not the
address). There is no second lookup between check and connect, so a name that answers with a public address
first and a private one later (DNS rebinding) cannot slip through. Redirects are never followed.

Refused unless inside `KETAMINE_CDS_PRIVATE_NETWORK_ALLOWLIST`: unspecified, loopback, link-local, private
(RFC 1918, fc00::/7), multicast and every other non-global address (shared, reserved, documentation), also
when wrapped in IPv6 (IPv4-mapped, NAT64, 6to4). Development mode allows every address, and says so.

A refusal raises `OutboundRefused` before any connection is attempted; callers turn it into their own error
(412 for FHIR, "jwks_unavailable" for keys). Its message names the kind of address, never the address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from cds.config import Settings
from cds.errors import OutboundRefused

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")

# One lookup per connection, then a connection to a numeric address. Tests replace these two to make names
# resolve where they need and to count connection attempts.
_getaddrinfo = socket.getaddrinfo
_create_connection = urllib3_connection.create_connection


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, NAT64, 6to4), which decides where it goes."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def address_kind(address: IPAddress) -> str | None:
    """Why this address is not a public target ("loopback", "private"...); None for a public address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return address_kind(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "non-public"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses outbound connections may reach."""

    allow_any: bool = False  # development mode
    allowed_networks: tuple[IPNetwork, ...] = ()  # the operator's explicit exceptions

    @classmethod
    def build(cls, *, dev_mode: bool, allowlist: Iterable[str]) -> AddressPolicy:
        return cls(dev_mode, tuple(ipaddress.ip_network(entry, strict=True) for entry in allowlist))

    def refusal(self, address: IPAddress) -> str | None:
        """None when a connection to `address` is allowed; otherwise the kind of address refused."""
        if self.allow_any:
            return None
        kind = address_kind(address)
        if kind is None:
            return None
        candidates = [address] + [e for e in [_embedded_ipv4(address)] if e is not None]
        if any(candidate in network for candidate in candidates for network in self.allowed_networks):
            return None
        return kind


def resolve_checked(host: str, port: int, policy: AddressPolicy) -> list[tuple[Any, ...]]:
    """`host`'s addresses (getaddrinfo results), all checked; `OutboundRefused` if any is not allowed.

    A name that resolves to a mix of public and private addresses is refused as a whole: such a name is
    either misconfigured or an attempt to reach the private one.
    """
    results = _getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for result in results:
        address = ipaddress.ip_address(str(result[4][0]).split("%", 1)[0])
        kind = policy.refusal(address)
        if kind is not None:
            log.warning(
                "outbound connection to host %s refused: it resolves to a %s address",
                host[:253],
                kind,
            )
            raise OutboundRefused(
                f"the server's address is a {kind} address, which this service does not connect to "
                "(KETAMINE_CDS_PRIVATE_NETWORK_ALLOWLIST lists the exceptions)"
            )
    return results


def _checked_new_conn(conn: HTTPConnection, policy: AddressPolicy) -> socket.socket:
    """urllib3's `_new_conn`, but: resolve once, check, connect to exactly the checked address."""
    host = conn._dns_host  # the host without IPv6 brackets, as urllib3 itself resolves it
    try:
        results = resolve_checked(host, conn.port, policy)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    last_error: OSError | None = None
    for _family, _type, _proto, _name, sockaddr in results:
        try:
            # A numeric address: create_connection's own getaddrinfo makes no DNS query.
            return _create_connection(
                (str(sockaddr[0]), conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            last_error = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last_error or 'no address'}")


def _pool_classes(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    class CheckedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _checked_new_conn(self, policy)

    class CheckedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _checked_new_conn(self, policy)

    class CheckedHTTPPool(HTTPConnectionPool):
        ConnectionCls = CheckedHTTPConnection

    class CheckedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedHTTPSConnection

    return {"http": CheckedHTTPPool, "https": CheckedHTTPSPool}


class _CheckedAdapter(HTTPAdapter):
    def __init__(self, policy: AddressPolicy) -> None:
        self._pool_classes = _pool_classes(policy)
        # one call fetches several FHIR searches at once and the worklist screens several patients at once,
        # all over one session: keep that many connections per host for reuse instead of discarding them
        super().__init__(max_retries=0, pool_maxsize=32)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


class _NoRedirectSession(requests.Session):
    def get_redirect_target(self, resp: requests.Response) -> None:  # noqa: ARG002
        return None  # never followed, whatever a caller asks: a redirect could point anywhere


def outbound_session(policy: AddressPolicy) -> requests.Session:
    """A session whose every connection obeys `policy`, ignores proxy variables and follows no redirect."""
    session = _NoRedirectSession()
    session.trust_env = False  # the EHR's token must go to the EHR, never through a proxy from env
    adapter = _CheckedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def address_policy(settings: Settings) -> AddressPolicy:
    return AddressPolicy.build(dev_mode=settings.dev_mode, allowlist=settings.private_network_allowlist)

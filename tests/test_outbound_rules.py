"""Outbound calls only where the caller's issuer allows, and never to private addresses.

In production each trusted issuer lists the FHIR base URLs its calls may name (`fhir_servers`). A call
naming any other server is answered from its prefetch alone, with no outbound request at all; if data is
missing the answer is 412 with an OperationOutcome that says why. A loopback listener counting the TCP
connections it receives proves "no outbound request".

Even a listed server is not connected to when its address is not public (loopback, link-local, private,
unspecified, multicast...) unless the operator lists its network (KETAMINE_CDS_PRIVATE_NETWORK_ALLOWLIST).
The check is on the address actually connected to: `Network` below makes every connection the service
opens land on the counting listener, whatever address it was meant for, and answers name lookups from a
table, so a test can name link-local or private addresses (or a name that resolves to one) and still count.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import outbound
from cds.config import Settings, TrustedIssuer, load_settings
from cds.errors import ConfigError, PreconditionFailed, Unauthorized
from cds.fhir.client import client_factory_for
from cds.fhir.prefetch import gather
from cds.outbound import AddressPolicy, address_kind, outbound_session
from cds.web.auth import ClientAuthenticator
from tests.support.builders import hook_request
from tests.support.cards import every_chart_policy
from tests.support.constants import NOW
from tests.support.ehr_client import EhrClient
from tests.support.fhir_server import FhirServerHandle, Reply, ScriptedServer
from tests.support.listener import CountingListener
from tests.support.synthea import synthea_patients, synthea_request

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_BASE = "https://cds.example.org"
SERVICE = "/cds-services/ketamine-patient-view"
LISTED = "https://fhir.hospital.example/r4"
AUTH = {"access_token": "fhir-token-for-the-ehr", "token_type": "Bearer", "expires_in": 300, "scope": "x"}


@pytest.fixture
def ehr(tmp_path: Path) -> EhrClient:
    return EhrClient.new(tmp_path, "http://unused", PUBLIC_BASE)


@pytest.fixture
def prod(
    make_app: Callable[..., Flask], ehr: EhrClient, tmp_path: Path
) -> Iterator[Callable[..., FlaskClient]]:
    """A production app factory: the EHR's issuer (pinned keys) lists `fhir_servers`."""
    made: list[Flask] = []

    def build(fhir_servers: tuple[str, ...] = (LISTED,), **overrides: Any) -> FlaskClient:
        issuer = TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file), fhir_servers=fhir_servers)
        values: dict[str, Any] = {
            "dev_mode": False,
            "public_base_url": PUBLIC_BASE,
            "trusted_issuers": (issuer,),
            "policy_file": every_chart_policy(tmp_path),  # the Synthea patients are in no ketamine course
        }
        values.update(overrides)
        app = make_app(**values)
        made.append(app)
        return app.test_client()

    yield build
    for app in made:
        app.extensions["ketamine_cds"].flush()


def call(client: FlaskClient, ehr: EhrClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(SERVICE, json=body, headers=ehr.headers(SERVICE))
    return response.status_code, response.get_json()


def missing_conditions(fhir_server: str, **extra: Any) -> dict[str, Any]:
    """A complete patient-view request but for its conditions, which must be fetched."""
    body = hook_request("patient-view")
    del body["prefetch"]["conditions"]
    body.update(fhirServer=fhir_server, fhirAuthorization=AUTH, **extra)
    return body


def diagnostics(outcome: dict[str, Any]) -> str:
    assert outcome["resourceType"] == "OperationOutcome"
    return " ".join(issue["diagnostics"] for issue in outcome["issue"])


def test_a_server_outside_the_issuers_list_gets_no_connection_and_the_412_says_why(
    prod: Callable[..., FlaskClient], ehr: EhrClient
) -> None:
    client = prod(fhir_server_allowlist=("http://127.0.0.1",), fhir_allow_http=True)
    with CountingListener() as listener:
        target = f"http://127.0.0.1:{listener.port}/fhir"
        status, outcome = call(client, ehr, missing_conditions(target))
        assert listener.connections == 0  # refused before any connection: nothing to wait for
    assert status == 412
    text = diagnostics(outcome)
    assert "registered for this client's issuer" in text
    assert [issue.get("expression") for issue in outcome["issue"]] == [["prefetch.conditions"]]
    # nothing about the operator's configuration: not the listed server, not the token
    body = json.dumps(outcome)
    assert LISTED not in body
    assert "fhir.hospital.example" not in body
    assert AUTH["access_token"] not in body


def test_a_server_outside_the_list_is_not_needed_when_the_prefetch_is_complete(
    prod: Callable[..., FlaskClient], ehr: EhrClient
) -> None:
    client = prod()
    with CountingListener() as listener:
        body = hook_request("patient-view")
        body.update(fhirServer=f"https://127.0.0.1:{listener.port}/fhir", fhirAuthorization=AUTH)
        status, payload = call(client, ehr, body)
        assert listener.connections == 0
    assert status == 200
    assert payload == {"cards": []}


@pytest.mark.parametrize(
    "named",
    [
        "https://fhir.hospital.example/r4-other",  # a sibling path, not below the prefix
        "https://fhir.hospital.example/",  # above the prefix
        "http://fhir.hospital.example/r4",  # scheme exact
        "https://fhir.hospital.example:8443/r4",  # port exact
        "https://evil.fhir.hospital.example/r4",  # host exact: no subdomains
        "https://fhir.hospital.example.evil.example/r4",
        "https://fhir.hospital.example/r4/../admin",
    ],
)
def test_near_misses_of_a_listed_prefix_are_refused(
    prod: Callable[..., FlaskClient], ehr: EhrClient, named: str
) -> None:
    status, outcome = call(prod(fhir_allow_http=True), ehr, missing_conditions(named))
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


def test_an_issuer_without_fhir_servers_is_screened_from_its_prefetch_only(
    prod: Callable[..., FlaskClient], ehr: EhrClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cds.app"):
        client = prod(fhir_servers=())
    assert any("lists no fhir_servers" in r.getMessage() for r in caplog.records)
    status, outcome = call(client, ehr, missing_conditions(LISTED))
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


def test_the_open_server_setting_is_checked_against_the_issuers_list_too(
    prod: Callable[..., FlaskClient], ehr: EhrClient
) -> None:
    with CountingListener() as listener:
        target = f"http://127.0.0.1:{listener.port}/fhir"
        client = prod(open_fhir_servers=(target,), fhir_server_allowlist=(target,))
        body = missing_conditions(target)
        del body["fhirAuthorization"]
        status, outcome = call(client, ehr, body)
        assert listener.connections == 0
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


def test_one_issuers_servers_cannot_be_named_by_another(
    make_app: Callable[..., Flask], ehr: EhrClient, tmp_path: Path
) -> None:
    other = EhrClient.new(tmp_path, "http://unused", PUBLIC_BASE)
    other.iss = "https://other-ehr.example.org"
    app = make_app(
        dev_mode=False,
        public_base_url=PUBLIC_BASE,
        trusted_issuers=(
            TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file), fhir_servers=(LISTED,)),
            TrustedIssuer(
                iss=other.iss, jwks_file=str(other.jwks_file), fhir_servers=("https://b.example/f",)
            ),
        ),
    )
    status, outcome = call(app.test_client(), other, missing_conditions(LISTED))
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


@pytest.mark.integration
def test_a_listed_server_is_read_as_before(
    prod: Callable[..., FlaskClient], ehr: EhrClient, fhir_server: FhirServerHandle
) -> None:
    patient = next(p for p in synthea_patients() if p.stem.startswith("Yvone_Emmerich"))
    client = prod(
        fhir_servers=(fhir_server.base_url,),
        fhir_server_allowlist=(fhir_server.base_url,),  # plain http
        private_network_allowlist=("127.0.0.1/32",),  # sekmet runs on loopback: listed by the operator
    )
    body = {
        "hook": "patient-view",
        "hookInstance": "5f0c4a52-1b8e-4c1e-9b7a-0d3c2e1f4a5b",
        "context": {"userId": "Practitioner/x", "patientId": patient.id},
        "fhirServer": fhir_server.base_url,
        "fhirAuthorization": {**AUTH, "access_token": fhir_server.token},
    }
    status, payload = call(client, ehr, body)
    assert status == 200, payload
    status, complete = call(client, ehr, synthea_request(patient))  # the whole record as prefetch
    assert sorted(c["summary"] for c in payload["cards"]) == sorted(c["summary"] for c in complete["cards"])
    assert payload["cards"]


def test_dev_mode_reads_any_server_and_says_so(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cds.app"):
        client = make_app().test_client()
    assert any("any fhirServer is read" in r.getMessage() for r in caplog.records)
    with CountingListener() as listener:
        body = missing_conditions(f"http://127.0.0.1:{listener.port}/fhir")
        response = client.post(SERVICE, json=body)
        assert listener.connections >= 1  # permissive: it tried (and the listener failed it)
    assert response.status_code == 412


# ---------------------------------------------------------------------------------------- address rules


@dataclass
class Network:
    """Every connection the service opens goes to `listener`; lookups come from `names` (else real DNS)."""

    listener: CountingListener
    names: dict[str, list[str]] = field(default_factory=dict)
    changing: dict[str, Iterator[list[str]]] = field(default_factory=dict)  # a new answer each lookup
    lookups: list[str] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)  # the numeric address each connection was opened to

    def getaddrinfo(self, host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        self.lookups.append(host)
        answers = next(self.changing[host]) if host in self.changing else self.names.get(host)
        if answers is None:
            return socket.getaddrinfo(host, port, *args)
        out: list[tuple[Any, ...]] = []
        for answer in answers:
            family = socket.AF_INET6 if ":" in answer else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (answer, port)))
        return out

    def create_connection(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        self.attempts.append(address[0])
        return socket.create_connection(("127.0.0.1", self.listener.port), timeout=2)


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    with CountingListener() as listener:
        net = Network(listener)
        monkeypatch.setattr(outbound, "_getaddrinfo", net.getaddrinfo)
        monkeypatch.setattr(outbound, "_create_connection", net.create_connection)
        yield net


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),  # the cloud metadata address
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.20", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("192.0.2.10", "private"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_the_operator_can_list_private_networks() -> None:
    policy = AddressPolicy.build(dev_mode=False, allowlist=["10.20.0.0/16", "::1"])
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) == "private"
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert AddressPolicy.build(dev_mode=True, allowlist=[]).refusal(ipaddress.ip_address("127.0.0.1")) is None


REFUSED_TARGETS: dict[str, tuple[str, dict[str, list[str]], bool]] = {
    # case -> (fhirServer, what the Network resolves names to, is it in the issuer's fhir_servers)
    "loopback by IP": ("https://127.0.0.1:{port}/fhir", {}, True),
    "loopback by name": ("https://localhost:{port}/fhir", {}, True),  # the machine's own resolver
    "IPv6 loopback": ("https://[::1]:{port}/fhir", {}, True),
    "IPv4-mapped loopback": ("https://[::ffff:127.0.0.1]:{port}/fhir", {}, True),
    "link-local (metadata)": ("https://169.254.169.254/latest/fhir", {}, True),
    "private": ("https://10.1.2.3/fhir", {}, True),
    "unspecified": ("https://0.0.0.0:{port}/fhir", {}, True),
    "name resolving to loopback": (
        "https://fhir.rebind.example/r4",
        {"fhir.rebind.example": ["127.0.0.1"]},
        True,
    ),
    "name resolving to private": (
        "https://fhir.internal.example/r4",
        {"fhir.internal.example": ["10.9.8.7"]},
        True,
    ),
    "name resolving to public and private": (
        "https://fhir.mixed.example/r4",
        {"fhir.mixed.example": ["93.184.216.34", "192.168.0.10"]},
        True,
    ),
    "public name outside the list": (
        "https://fhir.elsewhere.example/r4",
        {"fhir.elsewhere.example": ["93.184.216.34"]},
        False,
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_TARGETS))
def test_refused_targets_get_a_412_without_a_lookup_or_connection(
    prod: Callable[..., FlaskClient], ehr: EhrClient, network: Network, case: str
) -> None:
    template, names, listed = REFUSED_TARGETS[case]
    target = template.format(port=network.listener.port)
    network.names.update(names)
    client = prod(fhir_servers=(target,) if listed else (LISTED,))
    status, outcome = call(client, ehr, missing_conditions(target))
    assert network.listener.connections == 0  # no connection and no timeout to wait out
    assert network.attempts == []
    assert status == 412
    text = diagnostics(outcome)
    if listed:
        assert "does not connect to" in text
    else:
        assert "registered for this client's issuer" in text
        assert network.lookups == []  # not even resolved
    for answers in names.values():  # the addresses a name resolved to are not disclosed
        for answer in answers:
            assert answer not in json.dumps(outcome)


def test_a_listed_private_network_is_connected_to(
    prod: Callable[..., FlaskClient], ehr: EhrClient, network: Network
) -> None:
    """The rig does see connections: with 10.0.0.0/8 listed by the operator, the call connects."""
    target = "https://fhir.internal.example/r4"
    network.names["fhir.internal.example"] = ["10.9.8.7"]
    client = prod(fhir_servers=(target,), private_network_allowlist=("10.0.0.0/8",))
    status, outcome = call(client, ehr, missing_conditions(target))
    assert network.attempts == ["10.9.8.7"]
    assert network.listener.connections == 1
    assert status == 412  # the listener is no FHIR server
    assert "does not connect to" not in diagnostics(outcome)


def test_dns_rebinding_cannot_switch_the_address_after_the_check(
    prod: Callable[..., FlaskClient], ehr: EhrClient, network: Network
) -> None:
    """The name answers public once, then loopback: the connection goes to the address that was checked."""
    target = "https://fhir.rebinding.example/r4"
    network.changing["fhir.rebinding.example"] = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    call(prod(fhir_servers=(target,)), ehr, missing_conditions(target))
    assert network.lookups.count("fhir.rebinding.example") == 1
    assert network.attempts == ["93.184.216.34"]  # connected to the checked address, by number


# ---------------------------------------------------------------------------------------- JWKS fetches


class _Replay:
    def add_if_new(self, jti_key: str, ttl_s: int) -> bool:
        return True


@pytest.mark.parametrize(
    ("jwks_url", "jku", "names"),
    [
        ("https://keys.ehr.example/jwks.json", "https://10.0.0.7/jwks.json", {}),  # allowlisted jku, private
        ("https://keys.ehr.example/jwks.json", "https://169.254.169.254/jwks", {}),
        ("https://127.0.0.1:{port}/jwks.json", None, {}),
        ("https://keys.ehr.example/jwks.json", None, {"keys.ehr.example": ["127.0.0.1"]}),
    ],
)
def test_jwks_from_a_private_address_is_refused_without_a_fetch(
    ehr: EhrClient,
    network: Network,
    caplog: pytest.LogCaptureFixture,
    jwks_url: str,
    jku: str | None,
    names: dict[str, list[str]],
) -> None:
    network.names.update(names)
    jwks_url = jwks_url.format(port=network.listener.port)
    issuer = TrustedIssuer(iss=ehr.iss, jwks_url=jwks_url, jku_allowlist=(jku,) if jku else ())
    settings = Settings(public_base_url=PUBLIC_BASE, trusted_issuers=(issuer,))
    authenticator = ClientAuthenticator(settings, replay_cache=_Replay(), clock=NOW.timestamp)
    ehr.jku = jku
    with caplog.at_level("WARNING"), pytest.raises(Unauthorized):
        authenticator.verify(f"Bearer {ehr.token(SERVICE)}", PUBLIC_BASE + SERVICE)
    authenticator.close()
    assert network.attempts == []
    assert network.listener.connections == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any("reason=jwks_unavailable" in message for message in messages)
    assert any("does not connect to" in message for message in messages)


def test_jwks_from_a_listed_private_network_is_fetched(ehr: EhrClient, network: Network) -> None:
    issuer = TrustedIssuer(iss=ehr.iss, jwks_url="https://keys.ehr.example/jwks.json")
    network.names["keys.ehr.example"] = ["10.0.0.7"]
    settings = Settings(
        public_base_url=PUBLIC_BASE, trusted_issuers=(issuer,), private_network_allowlist=("10.0.0.0/8",)
    )
    authenticator = ClientAuthenticator(settings, replay_cache=_Replay(), clock=NOW.timestamp)
    ehr.jku = None
    with pytest.raises(Unauthorized):  # the listener speaks no TLS: the fetch fails, after connecting
        authenticator.verify(f"Bearer {ehr.token(SERVICE)}", PUBLIC_BASE + SERVICE)
    authenticator.close()
    assert network.attempts == ["10.0.0.7"]
    assert network.listener.connections == 1


# ---------------------------------------------------------------------------------------- TLS, redirects


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def self_signed(folder: Path, name: str) -> TlsFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(folder / f"{name}.crt", folder / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, TlsFiles]]:
    """An HTTPS server on 127.0.0.1 whose certificate names fhir.tls.example only."""
    files = self_signed(tmp_path, "fhir.tls.example")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"resourceType":"Bundle","type":"searchset"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), files
    finally:
        server.shutdown()
        server.server_close()


def test_tls_is_verified_for_the_host_name_while_connecting_to_the_checked_address(
    tls_server: tuple[int, TlsFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, files = tls_server
    answers = {"fhir.tls.example": "127.0.0.1", "other.tls.example": "127.0.0.1"}
    lookups: list[str] = []

    def resolve(host: str, port_: int, *args: Any) -> list[tuple[Any, ...]]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port_))]

    monkeypatch.setattr(outbound, "_getaddrinfo", resolve)
    session = outbound_session(AddressPolicy.build(dev_mode=False, allowlist=["127.0.0.1/32"]))
    session.verify = str(files.cert)
    with session:
        response = session.get(f"https://fhir.tls.example:{port}/fhir/Condition", timeout=5)
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):  # the certificate does not name this host
            session.get(f"https://other.tls.example:{port}/fhir/Condition", timeout=5)
    assert lookups == ["fhir.tls.example", "other.tls.example"]


def test_redirects_are_never_followed(network: Network) -> None:
    """Even when a caller asks for redirects, the session does not follow one (to another host or not)."""
    elsewhere = f"http://127.0.0.1:{network.listener.port}/steal"
    with ScriptedServer(lambda _t: Reply(302, headers={"Location": elsewhere})) as server:
        session = outbound_session(AddressPolicy.build(dev_mode=False, allowlist=["127.0.0.1/32"]))
        # the Network sends every connection to the listener; this test wants the scripted server
        session.mount("http://", requests.adapters.HTTPAdapter())
        with session:
            response = session.get(server.base_url + "/Condition", allow_redirects=True, timeout=5)
    assert response.status_code == 302
    assert network.listener.connections == 0
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------------------- the token's reach

TOKEN_TEMPLATES: dict[str, str] = json.loads((ROOT / "hooks" / "patient-view.json").read_text("utf-8"))[
    "prefetch"
]


def link_targets(base: str, elsewhere: str) -> st.SearchStrategy[str]:
    """Next links and references a hostile or broken FHIR server might send, about half under `base`."""
    origin = base.rsplit("/fhir", 1)[0]
    port = origin.rsplit(":", 1)[1]
    under = st.sampled_from(
        [
            f"{base}/Condition?page=2",
            f"{base}/MedicationRequest?page=3&_include=MedicationRequest:medication",
            "Condition?page=4",  # relative to the page
            "/fhir/AllergyIntolerance?page=5",
            f"{base}/Medication/med-under",
            "Medication/med-relative",
        ]
    )
    outside = st.sampled_from(
        [
            f"{elsewhere}/fhir/Condition?page=2",  # another port on the same host
            f"{elsewhere}/fhir/Medication/med-elsewhere",
            f"//127.0.0.1:{elsewhere.rsplit(':', 1)[1]}/fhir/Condition",  # scheme-relative
            f"{origin}/fhir-other/Condition?page=2",  # a sibling path on the same server
            f"{origin}/fhir/../admin/Condition",
            f"{origin}/fhir/%2e%2e/admin/Condition",
            f"http://user:pw@127.0.0.1:{port}/fhir/Condition",
            f"https://127.0.0.1:{port}/fhir/Condition",  # another scheme
            f"{origin}/Condition",  # above the base
            "#contained-med",
        ]
    )
    return st.one_of(under, outside)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_fhir_token_is_sent_only_under_fhir_server(data: st.DataObject) -> None:
    """Every request the FHIR client makes (searches, next links of prefetched and fetched pages, _include,
    Medication reads by relative and absolute reference) goes under fhirServer, and only those carry the
    token; another server, a sibling path and anything above the base get nothing."""
    token = "the-ehr-fhir-token"
    with ScriptedServer() as elsewhere, ScriptedServer() as server:
        base = server.base_url
        targets = link_targets(base, elsewhere.origin)
        # drawn up front (the server answers on its own thread): the next links the server's pages carry,
        # in the order it is asked, and the medication references of its MedicationRequests
        next_links = data.draw(st.lists(st.none() | targets, max_size=12), label="server next links")
        references = data.draw(st.lists(targets, max_size=4), label="medication references")

        def reply(target: str) -> Reply:
            path = target.split("?", 1)[0]
            read = re.fullmatch(r"/fhir/([A-Za-z]+)/([^/]+)", path)
            if read:  # Patient/p1, Medication/<id>
                return Reply(body={"resourceType": read.group(1), "id": read.group(2)})
            entries: list[dict[str, Any]] = []
            if path.endswith("/MedicationRequest"):
                entries = [
                    {
                        "resource": {
                            "resourceType": "MedicationRequest",
                            "id": f"mr-{index}",
                            "medicationReference": {"reference": reference},
                        },
                        "search": {"mode": "match"},
                    }
                    for index, reference in enumerate(references)
                ]
            bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
            following = next_links.pop(0) if next_links else None
            if following is not None:
                bundle["link"] = [{"relation": "next", "url": following}]
            return Reply(body=bundle)

        server.script = reply
        prefetch: dict[str, Any] = {}
        for key in data.draw(st.sets(st.sampled_from(sorted(TOKEN_TEMPLATES))), label="prefetched keys"):
            page: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
            next_link = data.draw(st.none() | targets, label=f"next link of prefetched {key}")
            if next_link is not None:
                page["link"] = [{"relation": "next", "url": next_link}]
            prefetch[key] = page
        body = {
            "hook": "patient-view",
            "hookInstance": "0b6f3a52-1b8e-4c1e-9b7a-0d3c2e1f4a5b",
            "context": {"userId": "Practitioner/x", "patientId": "p1"},
            "prefetch": prefetch,
            "fhirServer": base,
            "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "expires_in": 60},
        }
        check = replace(Settings(), dev_mode=True)
        with requests.Session() as session:
            factory = client_factory_for(
                body, settings=check, session=session, deadline=5, monotonic=lambda: 0.0
            )
            # a refused link or a loop may end the screen with 412: the point is where requests went
            with contextlib.suppress(PreconditionFailed):
                gather(TOKEN_TEMPLATES, body, list(TOKEN_TEMPLATES), client_factory=factory)
        assert elsewhere.requests == []
        assert server.requests, "the server was asked for something"
        for recorded in server.requests:
            path = recorded.target.split("?", 1)[0]
            assert path.startswith("/fhir/"), recorded.target
            assert ".." not in path
            assert "%2e" not in path.lower()
            assert recorded.headers.get("authorization") == f"Bearer {token}"


@pytest.mark.parametrize("entry", ["10.20.1.0/16", "fhir.internal.example", "10.0.0.300", "10.0.0.0/33"])
def test_a_bad_private_network_entry_stops_start_up(entry: str) -> None:
    with pytest.raises(ConfigError, match="KETAMINE_CDS_PRIVATE_NETWORK_ALLOWLIST") as caught:
        load_settings(environ={"KETAMINE_CDS_PRIVATE_NETWORK_ALLOWLIST": entry}, overrides={"dev_mode": True})
    assert entry in str(caught.value)

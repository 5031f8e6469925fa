"""Strict trusted-issuer configuration: a misspelt or malformed security setting stops start-up.

An issuer entry with an unknown key (say `fhir_server` for `fhir_servers`) used to be accepted silently, so
the protection it meant to add was simply absent. Every mistake below stops start-up with one line that
names the issuer (or its position) and the key; `ketamine-cds serve` prints that line and exits 2, without
a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cds.config import TrustedIssuer, load_settings
from cds.errors import ConfigError

KETAMINE_CDS = Path(sys.executable).with_name("ketamine-cds")
ISS = "https://ehr.example.org"
BASE_ENV = {"KETAMINE_CDS_PUBLIC_BASE_URL": "https://cds.example.org"}


def load(issuers: Any, **env: str) -> Any:
    raw = issuers if isinstance(issuers, str) else json.dumps(issuers)
    return load_settings(environ={**BASE_ENV, "KETAMINE_CDS_TRUSTED_ISSUERS": raw, **env})


def refused(issuers: Any, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(issuers, **env)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith("KETAMINE_CDS_TRUSTED_ISSUERS")
    return message


def issuer(**fields: Any) -> dict[str, Any]:
    return {"iss": ISS, "jwks_url": "https://ehr.example.org/jwks.json", **fields}


def test_a_complete_entry_loads() -> None:
    settings = load(
        [
            issuer(
                jku_allowlist=["https://ehr.example.org/k2.json"],
                tenant="t",
                fhir_servers=["https://f.example/r4"],
            )
        ]
    )
    assert settings.trusted_issuers == (
        TrustedIssuer(
            iss=ISS,
            jwks_url="https://ehr.example.org/jwks.json",
            jku_allowlist=("https://ehr.example.org/k2.json",),
            tenant="t",
            fhir_servers=("https://f.example/r4",),
        ),
    )


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("fhir_server", "fhir_servers"),
        ("jku_allow_list", "jku_allowlist"),
        ("jwksurl", "jwks_url"),
        ("aud", None),
    ],
)
def test_an_unknown_key_stops_start_up_naming_entry_and_key(key: str, hint: str | None) -> None:
    message = refused([issuer(**{key: ["https://f.example/r4"]})])
    assert f"issuer {ISS!r}" in message
    assert f"unknown key {key!r}" in message
    if hint:
        assert f"did you mean {hint!r}" in message


@pytest.mark.parametrize("iss", ["http://ehr.example.org", "ehr.example.org", "urn:ehr:1", "https://"])
def test_an_iss_that_is_not_an_https_url_stops_start_up(iss: str) -> None:
    message = refused([issuer(iss=iss)])
    assert "key 'iss'" in message
    assert "https URL" in message


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("fhir.example.org/r4", "absolute https URL"),
        ("http://fhir.example.org/r4", "plain http"),
        ("https://me:pw@fhir.example.org/r4", "credentials"),
        ("https://fhir.example.org/r4?_format=json", "query"),
        ("https://fhir.example.org:99999/r4", "not a valid URL"),
    ],
)
def test_a_bad_fhir_servers_entry_stops_start_up(entry: str, why: str) -> None:
    message = refused([issuer(fhir_servers=["https://good.example/r4", entry])])
    assert f"issuer {ISS!r}, key 'fhir_servers'" in message
    assert repr(entry) in message
    assert why in message


def test_a_plain_http_fhir_server_is_accepted_when_allowed_explicitly() -> None:
    url = "http://fhir.lab.example/r4"
    settings = load([issuer(fhir_servers=[url])], KETAMINE_CDS_FHIR_SERVER_ALLOWLIST=url)
    assert settings.trusted_issuers[0].fhir_servers == (url,)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (issuer(fhir_servers="https://f.example/r4"), "key 'fhir_servers' must be a list"),
        (issuer(jku_allowlist=[1]), "key 'jku_allowlist' must be a list"),
        (issuer(tenant=7), "key 'tenant' must be a string"),
        (issuer(tenant=""), "key 'tenant' must not be empty"),
        ({"jwks_url": "https://ehr.example.org/jwks.json"}, "entry 1: key 'iss' is required"),
        ({"iss": ISS}, "exactly one of the keys 'jwks_url' or 'jwks_file'"),
        (issuer(jwks_file="/etc/k.json"), "exactly one of the keys"),
        (
            {"iss": ISS, "jwks_file": "/etc/k.json", "jku_allowlist": ["https://ehr.example.org/k"]},
            "key 'jku_allowlist' has no effect with 'jwks_file'",
        ),
        (issuer(jwks_url="/relative/jwks.json"), "key 'jwks_url' must be an absolute"),
    ],
)
def test_malformed_entries_stop_start_up(entry: Any, expected: str) -> None:
    assert expected in refused([entry])


def test_the_second_entry_is_named_by_position_when_it_has_no_iss() -> None:
    assert "entry 2" in refused([issuer(), "not an object"])


def test_a_missing_issuers_file_is_one_line() -> None:
    message = refused("@/nonexistent/issuers.json")
    assert "FileNotFoundError" in message


def test_serve_with_a_misspelt_issuer_key_exits_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETAMINE_CDS_")}
    env.update(
        BASE_ENV,
        KETAMINE_CDS_TRUSTED_ISSUERS=json.dumps([issuer(fhir_server=["https://fhir.example.org/r4"])]),
        KETAMINE_CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'cds.sqlite3'}",
    )
    result = subprocess.run(
        [str(KETAMINE_CDS), "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "unknown key 'fhir_server'" in lines[0]
    assert "did you mean 'fhir_servers'" in lines[0]

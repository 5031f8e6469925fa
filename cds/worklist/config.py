"""The worklist's one configuration file (YAML), merged with the command line, validated strictly.

    fhir_server: https://fhir.example.org/r4
    allow_server: false          # true: trust this server although it is plain http or on a private network
    timezone: Europe/London      # the clinic's time zone (IANA); session and hold times are shown in it
    concurrency: 8               # patients screened at once
    discovery_time_budget_s: 60  # for finding the sessions of the window (each patient has the hooks' budget)
    sessions_file: null          # the site's own copy of rules/_sessions.yaml
    auth:
      type: smart                # smart | bearer
      # bearer: the token comes from --token or the environment variable named here (never the file)
      token_env: KETAMINE_WORKLIST_TOKEN
      # smart (SMART Backend Services, client_credentials with a private_key_jwt assertion):
      client_id: ketamine-worklist
      private_key_file: /etc/ketamine-cds/worklist-key.pem
      key_id: worklist-2026
      algorithm: RS384           # RS384 | ES384
      scope: system/*.read
      token_url: null            # discovered from .well-known/smart-configuration when null

Unknown keys, wrong types and missing values stop the command with a message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from cds.errors import ConfigError
from cds.fhir.smart_backend import SIGNING_ALGORITHMS, SmartClientConfig
from cds.loading import load_yaml

DEFAULT_TOKEN_ENV = "KETAMINE_WORKLIST_TOKEN"  # noqa: S105 (the name of a variable, not a secret)
_TOP = {
    "fhir_server",
    "allow_server",
    "timezone",
    "concurrency",
    "discovery_time_budget_s",
    "sessions_file",
    "auth",
}
_AUTH = {"type", "token_env", "client_id", "private_key_file", "key_id", "algorithm", "scope", "token_url"}


@dataclass(frozen=True)
class WorklistConfig:
    fhir_server: str
    allow_server: bool
    zone: ZoneInfo
    concurrency: int
    discovery_time_budget_s: float
    sessions_file: Path | None
    auth_type: str  # "bearer" | "smart"
    token: str | None  # bearer only; never printed
    smart: SmartClientConfig | None

    def __repr__(self) -> str:  # the token and the key stay out of any traceback or log
        return f"WorklistConfig(fhir_server={self.fhir_server!r}, auth_type={self.auth_type!r})"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the worklist configuration {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"worklist configuration {path}: must be a mapping of settings")
    return data


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _string(data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def load_worklist_config(
    path: Path | None,
    *,
    fhir_server: str | None = None,
    token: str | None = None,
    allow_server: bool = False,
    environ: Mapping[str, str] | None = None,
) -> WorklistConfig:
    """The file (if any), then the command line over it. Raises ConfigError naming the setting."""
    env = os.environ if environ is None else environ
    data = _read(path) if path else {}
    where = str(path) if path else "worklist settings"
    _check_keys(data, _TOP, where)
    auth = data.get("auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError(f"{where}: auth must be a mapping")
    _check_keys(auth, _AUTH, f"{where}: auth")

    server = fhir_server or _string(data, "fhir_server", where)
    if not server:
        raise ConfigError("no FHIR server: pass --fhir-server or set fhir_server in the configuration file")
    allow = data.get("allow_server", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where}: allow_server must be true or false")
    zone_name = _string(data, "timezone", where, "UTC") or "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{where}: timezone {zone_name!r} is not an IANA time zone") from exc
    concurrency = data.get("concurrency", 8)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 64:
        raise ConfigError(f"{where}: concurrency must be a whole number from 1 to 64")
    budget = data.get("discovery_time_budget_s", 60)
    if not isinstance(budget, int | float) or isinstance(budget, bool) or budget <= 0:
        raise ConfigError(f"{where}: discovery_time_budget_s must be a number above zero")
    sessions = _string(data, "sessions_file", where)
    sessions_path = (path.parent / sessions if path else Path(sessions)) if sessions else None

    auth_type = _string(auth, "type", f"{where}: auth", "bearer")
    if token and auth_type == "smart":
        auth_type = "bearer"  # an explicit --token wins over the file
    bearer: str | None = None
    smart: SmartClientConfig | None = None
    if auth_type == "bearer":
        token_env = _string(auth, "token_env", f"{where}: auth", DEFAULT_TOKEN_ENV) or DEFAULT_TOKEN_ENV
        bearer = token or env.get(token_env) or None
        if not bearer:
            raise ConfigError(
                f"no access token: pass --token, set {token_env}, or configure SMART Backend Services "
                "(auth.type: smart) in the configuration file"
            )
    elif auth_type == "smart":
        smart = _smart(auth, path, f"{where}: auth")
    else:
        raise ConfigError(f"{where}: auth.type must be bearer or smart")
    return WorklistConfig(
        fhir_server=server,
        allow_server=allow_server or allow,
        zone=zone,
        concurrency=concurrency,
        discovery_time_budget_s=float(budget),
        sessions_file=sessions_path,
        auth_type=auth_type,
        token=bearer,
        smart=smart,
    )


def _smart(auth: Mapping[str, Any], path: Path | None, where: str) -> SmartClientConfig:
    client_id = _string(auth, "client_id", where)
    key_file = _string(auth, "private_key_file", where)
    if not client_id or not key_file:
        raise ConfigError(f"{where}: SMART Backend Services needs client_id and private_key_file")
    key_path = Path(key_file)
    if not key_path.is_absolute() and path is not None:
        key_path = path.parent / key_path
    try:
        pem = key_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read private_key_file {key_path}: {exc.strerror}") from None
    algorithm = _string(auth, "algorithm", where, "RS384") or "RS384"
    if algorithm not in SIGNING_ALGORITHMS:
        raise ConfigError(f"{where}: algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}")
    return SmartClientConfig(
        client_id=client_id,
        private_key_pem=pem,
        key_id=_string(auth, "key_id", where, "") or "",
        algorithm=algorithm,
        scope=_string(auth, "scope", where, "system/*.read") or "system/*.read",
        token_url=_string(auth, "token_url", where),
    )

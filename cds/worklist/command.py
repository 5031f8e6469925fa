"""`ketamine-cds worklist`: find the window's sessions, screen each patient, write the list.

Progress goes to standard error as a bar when it is a terminal (quiet otherwise); the summary line
(patients, sessions, critical, calls to make, not screened) always goes to standard error. Neither ever
carries a token, a patient's name or a patient id.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.config import Settings, load_settings
from cds.fhir.client import FhirClient
from cds.fhir.smart_backend import SmartBackendToken, StaticToken, TokenSource
from cds.worklist.build import Worklist, WorklistBuilder
from cds.worklist.config import WorklistConfig
from cds.worklist.render import render_worklist
from cds.worklist.sessions import Discovery, Window, load_session_policy

MAX_DAYS = 31


def worklist_settings(config: WorklistConfig, base: Settings | None = None) -> Settings:
    """The service's settings (environment included, validated) for the worklist: production rules for
    the FHIR client (https only), except for the one server the operator named and explicitly allowed
    (`allow_server`), which may then be plain http or on a private network."""
    if base is None:  # the command: the serving checks (issuers, public URL) do not apply to it
        base = load_settings(overrides={"dev_mode": True})
    allowlist = base.fhir_server_allowlist
    if config.allow_server:
        allowlist = (*allowlist, config.fhir_server.rstrip("/"))
    return replace(base, dev_mode=False, fhir_server_allowlist=allowlist)


def token_source(config: WorklistConfig, http: requests.Session) -> TokenSource:
    if config.smart is None:
        assert config.token is not None
        return StaticToken(config.token)
    server = urlsplit(config.fhir_server)

    def allowed(url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return True
        return config.allow_server and parts.scheme == "http" and parts.netloc == server.netloc

    return SmartBackendToken(config.fhir_server, config.smart, session=http, url_allowed=allowed)


def progress_bar(stream: TextIO) -> Callable[[int, int], None]:
    if not stream.isatty():
        return lambda _done, _total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        stream.write(f"\rscreening [{'#' * filled}{'.' * (width - filled)}] {done}/{total} patients")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def build_worklist(
    config: WorklistConfig,
    first_day: date,
    days: int,
    *,
    knowledge: Knowledge | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    http: requests.Session | None = None,
    settings: Settings | None = None,
) -> Worklist:
    """Find the window's sessions and screen every patient. `settings`: the running service's (else the
    environment's, as for the command)."""
    settings = worklist_settings(config, settings)
    knowledge = knowledge or load_knowledge(settings.policy_file)
    policy = load_session_policy(knowledge, config.sessions_file)
    session = http or requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=config.concurrency + 2)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    tokens = token_source(config, session)
    window = Window(first_day, days, config.zone)
    discovery_client = FhirClient(
        config.fhir_server,
        session=session,
        access_token=tokens.token(),
        settings=settings,
        deadline=time.monotonic() + config.discovery_time_budget_s,
    )
    sessions = Discovery(knowledge, policy, discovery_client, window).sessions()
    builder = WorklistBuilder(
        knowledge=knowledge,
        settings=settings,
        session_policy=policy,
        fhir_base_url=config.fhir_server,
        tokens=tokens,
        http=session,
        clock=clock,
        concurrency=config.concurrency,
        progress=progress,
    )
    return builder.build(first_day, days, sessions)


def run_worklist(
    config: WorklistConfig, first_day: date, days: int, fmt: str, output: Path | None, stderr: TextIO
) -> int:
    started = time.monotonic()
    worklist = build_worklist(config, first_day, days, progress=progress_bar(stderr))
    text = render_worklist(worklist, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
    stderr.write(f"worklist: {worklist.summary_line()} ({time.monotonic() - started:.1f} s)\n")
    return 0

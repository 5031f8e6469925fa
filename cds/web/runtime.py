"""Everything one app instance holds: settings, knowledge, store, shared state, auth, metrics, clock.

Built once by `create_app`; request handlers reach it through `current_app.extensions`. Audit records and
issued-card records are written by a background thread so the request path never waits on a disk
flush; feedback, which the caller must be able to trust, is committed before the response.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Request, Response, g

from cds.clinical.knowledge import Knowledge, ServiceDefinition
from cds.clinical.screening import Screener, ScreenResult
from cds.config import Settings
from cds.outbound import address_policy, outbound_session
from cds.storage.shared_state import ReplayCache, SeenFindings
from cds.storage.store import AuditRecord, IssuedCard, Store, patient_hash
from cds.web.auth import ClientAuthenticator, VerifiedClient, expected_audience
from cds.web.cors import CorsPolicy
from cds.web.logs import SAFE_EXTRA
from cds.web.metrics import Metrics

audit_log = logging.getLogger("cds.audit")
log = logging.getLogger("cds.web.runtime")


class BackgroundRecorder:
    """A bounded queue drained by one daemon thread (started lazily, so it survives gunicorn's fork)."""

    def __init__(self, write: Callable[[list[Any]], None], *, capacity: int = 10_000) -> None:
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._pid: int | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="cds-recorder", daemon=True).start()
            atexit.register(self.flush)

    def put(self, item: Any) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning("audit queue full: record dropped", extra={SAFE_EXTRA: {"dropped": self.dropped}})

    def _drain(self, first: Any) -> None:
        batch = [first]
        while len(batch) < 500:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        try:
            self._write(batch)
        except Exception as exc:  # the recorder must outlive a database hiccup
            log.error("audit write failed: %s", type(exc).__name__)
        finally:
            for _ in batch:
                self._queue.task_done()

    def _run(self) -> None:
        while True:
            self._drain(self._queue.get())

    def flush(self) -> None:
        """Write everything queued (tests, shutdown)."""
        if self._pid != os.getpid():
            return
        self._queue.join()


@dataclass(slots=True)
class Runtime:
    settings: Settings
    knowledge: Knowledge
    store: Store
    seen: SeenFindings
    replay_cache: ReplayCache
    metrics: Metrics
    clock: Callable[[], datetime]
    cors: CorsPolicy
    authenticator: ClientAuthenticator | None
    new_uuid: Callable[[], str] | None = None
    _local: threading.local = field(default_factory=threading.local)
    recorder: BackgroundRecorder = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = BackgroundRecorder(self._write_records)

    # ------------------------------------------------------------------------------------ screening

    def http(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = outbound_session(address_policy(self.settings))  # no proxies, checked addresses
            self._local.session = session
        return session

    def screener(self, client: VerifiedClient | None = None) -> Screener:
        return Screener(
            self.knowledge,
            self.settings,
            self.http(),
            self.clock,
            self.new_uuid,
            fhir_servers=self.fhir_servers_for(client),
        )

    def fhir_servers_for(self, client: VerifiedClient | None) -> tuple[str, ...] | None:
        """The fhirServer prefixes a call may name: its issuer's `fhir_servers`; any in dev mode."""
        if self.settings.dev_mode:
            return None
        issuer = next((i for i in self.settings.trusted_issuers if client and i.iss == client.iss), None)
        return issuer.fhir_servers if issuer is not None else ()  # no verified issuer: nothing is read

    def authenticate(self, request: Request) -> VerifiedClient | None:
        if self.authenticator is None:
            return None
        base = self.settings.public_base_url or request.host_url
        return self.authenticator.verify(
            request.headers.get("Authorization"), expected_audience(base, request.path)
        )

    def hash(self, value: str | None) -> str | None:
        return patient_hash(self.settings.audit_hash_key, value) if value else None

    def suppress_repeats(
        self, service: ServiceDefinition, body: Mapping[str, Any], result: ScreenResult
    ) -> list[dict[str, Any]]:
        """A finding shown at order-select is not repeated at order-sign while its evidence is unchanged."""
        window = self.settings.repeat_suppression_s
        if not window or service.hook not in {"order-select", "order-sign"} or not result.patient_ref:
            return result.cards
        context = body.get("context", {})
        encounter = context.get("encounterId") if isinstance(context.get("encounterId"), str) else None
        scope = f"{self.hash(result.patient_ref)}|{self.hash(encounter) or '-'}"
        keys = [(f"select|{scope}|{finding.rule.id}", finding.fingerprint) for finding in result.findings]
        if service.hook == "order-select":
            self.seen.record_shown(keys, window)  # one round trip for all of this call's findings
            return result.cards
        return [
            card
            for (key, fingerprint), card in zip(keys, result.cards, strict=True)
            if not self.seen.was_shown(key, fingerprint, window)
        ]

    # ------------------------------------------------------------------------------------ recording

    def record_cards(
        self,
        service: ServiceDefinition,
        body: Mapping[str, Any],
        result: ScreenResult,
        cards: list[dict[str, Any]],
    ) -> None:
        shown = {card["uuid"] for card in cards}
        now = datetime.now(UTC)
        context = body.get("context", {})
        encounter = context.get("encounterId") if isinstance(context.get("encounterId"), str) else None
        for finding, card in zip(result.findings, result.cards, strict=True):
            if card["uuid"] not in shown:
                continue  # suppressed as a repeat: not returned, so neither counted nor recorded
            self.metrics.count_cards(finding.rule.id, finding.indicator)
            self.recorder.put(
                IssuedCard(
                    uuid=card["uuid"],
                    service_id=service.id,
                    rule_id=finding.rule.id,
                    rule_version=finding.rule.version,
                    hook_instance=str(body.get("hookInstance")),
                    patient_hash=self.hash(result.patient_ref) or "-",
                    encounter_hash=self.hash(encounter),
                    indicator=finding.indicator,
                    fingerprint=finding.fingerprint,
                    issued_at=now,
                )
            )
        for key in result.fetched:
            self.metrics.count_fetch(key)

    def audit(self, request: Request, response: Response, seconds: float) -> None:
        client: VerifiedClient | None = g.get("client")
        service = (request.view_args or {}).get("service_id", "?")
        fields = {
            "event": "feedback" if request.path.endswith("/feedback") else "service-call",
            "service": service,
            "hookInstance": g.get("hook_instance"),
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "cards": len(g.get("card_uuids", [])),
            "rules": g.get("rule_ids", []),
            "fetched": g.get("fetched", []),
            "issuer": client.iss if client else None,
            "jti": client.jti if client else None,
            "patient": self.hash(g.get("patient_ref")),
        }
        audit_log.info("call", extra={SAFE_EXTRA: fields})
        endpoint = f"{service}/feedback" if fields["event"] == "feedback" else str(service)
        self.metrics.observe_request(endpoint, response.status_code, seconds)
        self.recorder.put(
            AuditRecord(
                hook_instance=str(g.get("hook_instance") or "-"),
                service_id=str(service),
                issuer=client.iss if client else None,
                jti=client.jti if client else None,
                patient_hash=self.hash(g.get("patient_ref")),
                duration_ms=seconds * 1000,
                outcome=response.status_code,
                rule_ids=tuple(g.get("rule_ids", [])),
                card_uuids=tuple(g.get("card_uuids", [])),
                at=datetime.now(UTC),
            )
        )

    def _write_records(self, batch: list[Any]) -> None:
        cards = [item for item in batch if isinstance(item, IssuedCard)]
        if cards:
            self.store.record_cards(cards)
        self.store.record_audits([item for item in batch if isinstance(item, AuditRecord)])

    def flush(self) -> None:
        self.recorder.flush()

"""The app factory: settings -> knowledge -> store and shared state -> Flask app. No globals.

Everything that can be wrong (configuration, rules, value sets, the database) fails here, at start-up,
with a message naming what to fix.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask

from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.config import Settings, load_settings
from cds.storage.guard import Guard
from cds.storage.shared_state import make_shared_state, redis_for_readiness
from cds.storage.store import Store
from cds.web.api import bp
from cds.web.auth import ClientAuthenticator
from cds.web.cors import CorsPolicy
from cds.web.logs import configure
from cds.web.metrics import Metrics
from cds.web.runtime import Runtime
from cds.web.screens import pages
from cds.web.worklist import EXTENSION as WORKLIST
from cds.web.worklist import bp as worklist_bp
from cds.worklist.config import load_worklist_config

log = logging.getLogger("cds.app")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    settings: Settings | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    knowledge: Knowledge | None = None,
    clock: Callable[[], datetime] = _utc_now,
    new_uuid: Callable[[], str] | None = None,
    maintenance: bool = True,
    draining: Callable[[], bool] | None = None,
) -> Flask:
    """The app. With `maintenance` (once per deployment start: the serving master, before forking) the
    database is migrated and purged, the pseudonym key resolved, Redis checked and the outboxes of stopped
    processes replayed; serving workers skip all of it and touch no dependency while starting, so a worker
    restarted during an outage still comes up (and answers 503 where it must)."""
    settings = settings or load_settings(overrides=overrides)
    configure(settings.log_level)
    knowledge = knowledge or load_knowledge(settings.policy_file)
    store = Store.open(
        settings.database_url,
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
        pool_timeout_s=settings.storage_wait_s,
    )
    if maintenance:
        log.info("%s", store.migrate())
    if maintenance and settings.audit_retention_days:
        removed = store.purge(settings.audit_retention_days)
        if removed:
            days = settings.audit_retention_days
            log.info("retention: removed %d records older than %d days", removed, days)
    hash_key = settings.audit_hash_key or store.audit_key()
    metrics = Metrics()
    db_guard = Guard("database", settings.storage_wait_s)
    seen, replay_cache = make_shared_state(
        settings, store, guard=db_guard, check=maintenance, on_error=metrics.count_replay_error
    )
    authenticator = (
        None
        if settings.dev_mode
        # the tokens' exp, iat and nbf are judged on the app's clock, like everything else it dates
        else ClientAuthenticator(settings, replay_cache=replay_cache, clock=lambda: clock().timestamp())
    )
    if settings.dev_mode:
        log.warning(
            "DEVELOPMENT MODE: client authentication is OFF, browser clients from any origin are "
            "allowed (CORS), and any fhirServer is read (plain http, no token, no per-issuer list, "
            "private and loopback addresses). "
            "Never expose this instance to patient data."
        )
    for issuer in settings.trusted_issuers if not settings.dev_mode else ():
        if not issuer.fhir_servers:
            log.warning(
                "trusted issuer %s lists no fhir_servers: its calls are screened from their prefetch only, "
                "and data missing from it is answered 412",
                issuer.iss,
            )
    app = Flask("cds")
    # one byte over the limit: a chunked body (no Content-Length) is cut there by werkzeug, and the extra
    # byte is what tells read_json_object it was too large (413) rather than truncated JSON (400)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    runtime = Runtime(
        settings=settings,
        knowledge=knowledge,
        store=store,
        seen=seen,
        replay_cache=replay_cache,
        metrics=metrics,
        clock=clock,
        cors=CorsPolicy.for_mode(settings.cors_origins, dev_mode=settings.dev_mode),
        authenticator=authenticator,
        hash_key=hash_key,
        db_guard=db_guard,
        redis=redis_for_readiness(settings),
        new_uuid=new_uuid,
    )
    if draining is not None:
        runtime.draining = draining
    if maintenance:
        runtime.outbox.replay_orphans()
    app.extensions["ketamine_cds"] = runtime
    app.register_blueprint(bp)
    if settings.worklist_config:  # read and checked now: a broken worklist file stops the start-up
        app.extensions[WORKLIST] = load_worklist_config(Path(settings.worklist_config))
        app.register_blueprint(worklist_bp)
    app.register_blueprint(pages)
    return app


# Young-generation threshold: a large request allocates tens of thousands of containers that all live until
# the response; collecting them every 700 allocations is wasted work (the benchmark's p95 tail).
_GC_YOUNG_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Move what start-up built (value-set indexes, rules, models) out of the collector's sight.

    Called by the serving worker once its app is built (cds.cli), not by the factory: process-wide.

    Without this, full collections triggered by parsing a large request walk every long-lived object and
    show up as a bimodal latency tail (p95 about 3x p50 at 1,000 resources). Standard for pre-loaded
    servers: collect once, freeze the survivors, and collect the young generation less eagerly.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(max(_young, _GC_YOUNG_THRESHOLD), middle, old)

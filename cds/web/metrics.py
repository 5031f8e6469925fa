"""Prometheus metrics for one app instance, on a private registry (never the process-global one).

Series (all prefixed ``ketamine_cds_``):

    requests_total{service,status}                   calls answered, by service id and HTTP status
    request_duration_seconds{service,status}         latency histogram, same labels
    cards_issued_total{rule_id,indicator}            cards returned, by rule and indicator
    fhir_fallback_fetches_total{key}                 prefetch keys we had to fetch from the FHIR server
    outbox_records_total{kind,event}                 outbox records queued, shipped, retried or dropped
                                                     (dropped stays 0 short of a full disk: alert on it)
    replay_cache_errors_total{backend}               replay-cache lookups that failed, by backend
    storage_errors_total{dependency}                 request-path storage calls that failed or timed out
    process_*                                        CPU, memory and file descriptors of the answering process

Label values must come from bounded sets: pass the service id only when it is one we host (use
``"unknown"`` for a 404), never a patient, user or hookInstance.

Several gunicorn workers: each worker process has its own registry, so a scrape would see only the worker
that answered it. ``ketamine-cds serve`` therefore creates a fresh ``PROMETHEUS_MULTIPROC_DIR`` under the
work directory before forking (unless one is set), prometheus_client keeps values in files there, and
:meth:`Metrics.render` aggregates all workers; a stopped worker's files are marked dead. Without the
variable (one process, the tests), metrics are per process.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

__all__ = ["LATENCY_BUCKETS_S", "Metrics"]

# A CDS call has a budget of a few seconds (Settings.request_time_budget_s defaults to 8 s).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The app's counters and histograms. Create one per app (tests create many: no global state)."""

    def __init__(self, namespace: str = "ketamine_cds") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "requests",
            "CDS service calls answered, by service id and HTTP status.",
            ("service", "status"),
            namespace=namespace,
            registry=self.registry,
        )
        self._latency = Histogram(
            "request_duration_seconds",
            "Time to answer a CDS service call, by service id and HTTP status.",
            ("service", "status"),
            namespace=namespace,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._cards = Counter(
            "cards_issued",
            "Cards returned to CDS clients, by rule id and indicator.",
            ("rule_id", "indicator"),
            namespace=namespace,
            registry=self.registry,
        )
        self._outbox = Counter(
            "outbox_records",
            "Outbox records by kind (card, audit, feedback) and event (queued, shipped, retried, dropped).",
            ("kind", "event"),
            namespace=namespace,
            registry=self.registry,
        )
        self._replay_errors = Counter(
            "replay_cache_errors",
            "Replay-cache lookups that failed, by backend (redis, database).",
            ("backend",),
            namespace=namespace,
            registry=self.registry,
        )
        self._storage_errors = Counter(
            "storage_errors",
            "Storage calls on the request path that failed or timed out, by dependency.",
            ("dependency",),
            namespace=namespace,
            registry=self.registry,
        )
        ProcessCollector(namespace="", registry=self.registry)
        self._fetches = Counter(
            "fhir_fallback_fetches",
            "Prefetch keys fetched from the FHIR server because the client did not prefetch them usably.",
            ("key",),
            namespace=namespace,
            registry=self.registry,
        )

    def observe_request(self, service: str, status: int | str, seconds: float) -> None:
        labels = {"service": service, "status": str(status)}
        self._requests.labels(**labels).inc()
        self._latency.labels(**labels).observe(seconds)

    def count_cards(self, rule_id: str, indicator: str, n: int = 1) -> None:
        if n > 0:
            self._cards.labels(rule_id=rule_id, indicator=indicator).inc(n)

    def count_fetch(self, key: str) -> None:
        self._fetches.labels(key=key).inc()

    def count_outbox(self, kind: str, event: str, n: int = 1) -> None:
        if n > 0:
            self._outbox.labels(kind=kind, event=event).inc(n)

    def count_replay_error(self, backend: str) -> None:
        self._replay_errors.labels(backend=backend).inc()

    def count_storage_error(self, dependency: str) -> None:
        self._storage_errors.labels(dependency=dependency).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type. Aggregates all workers in multiprocess mode."""
        if os.environ.get(_MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            ProcessCollector(namespace="", registry=registry)  # the answering worker's own
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

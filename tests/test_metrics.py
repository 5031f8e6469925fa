"""Prometheus metrics: the series exist with their labels, registries are private, workers can aggregate."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cds.web.metrics import Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_series_and_labels() -> None:
    metrics = Metrics()
    metrics.observe_request("ketamine-order-sign", 200, 0.030)
    metrics.observe_request("ketamine-order-sign", 200, 0.700)
    metrics.observe_request("ketamine-order-sign", 412, 0.004)
    metrics.count_cards("ketamine-benzodiazepine", "warning", 2)
    metrics.count_cards("ketamine-benzodiazepine", "warning")
    metrics.count_cards("ketamine-blood-pressure", "critical", 0)  # nothing issued: no series
    metrics.count_fetch("medications")
    metrics.count_fetch("medications")
    body, content_type = metrics.render()
    text = body.decode("utf-8")
    got = samples(text)

    assert content_type.startswith("text/plain")
    ok = (("service", "ketamine-order-sign"), ("status", "200"))
    assert got[("ketamine_cds_requests_total", ok)] == 2
    assert got[("ketamine_cds_requests_total", (("service", "ketamine-order-sign"), ("status", "412")))] == 1
    assert got[("ketamine_cds_request_duration_seconds_count", ok)] == 2
    assert got[("ketamine_cds_request_duration_seconds_sum", ok)] == pytest.approx(0.73)
    assert got[("ketamine_cds_request_duration_seconds_bucket", (("le", "0.05"), *ok))] == 1
    assert got[("ketamine_cds_request_duration_seconds_bucket", (("le", "1.0"), *ok))] == 2
    cards = (("indicator", "warning"), ("rule_id", "ketamine-benzodiazepine"))
    assert got[("ketamine_cds_cards_issued_total", cards)] == 3
    assert "ketamine-blood-pressure" not in text
    assert got[("ketamine_cds_fhir_fallback_fetches_total", (("key", "medications"),))] == 2
    assert "# HELP ketamine_cds_requests_total" in text
    assert "# TYPE ketamine_cds_request_duration_seconds histogram" in text


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    first.count_fetch("patient")
    assert b'key="patient"' in first.render()[0]
    assert b'key="patient"' not in second.render()[0]


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, a scrape on one worker reports the requests of all workers."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = textwrap.dedent(
        """
        import sys
        from cds.web.metrics import Metrics
        m = Metrics()
        m.observe_request("ketamine-order-select", 200, 0.01)
        m.count_cards("r-1", "info", int(sys.argv[1]))
        """
    )
    for n in ("2", "3"):
        subprocess.run([sys.executable, "-c", worker, n], env=env, check=True, timeout=60)
    scrape = (
        "from cds.web.metrics import Metrics; import sys; sys.stdout.write(Metrics().render()[0].decode())"
    )
    text = subprocess.run(
        [sys.executable, "-c", scrape], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    got = samples(text)
    select = (("service", "ketamine-order-select"), ("status", "200"))
    assert got[("ketamine_cds_requests_total", select)] == 2
    assert got[("ketamine_cds_cards_issued_total", (("indicator", "info"), ("rule_id", "r-1")))] == 5

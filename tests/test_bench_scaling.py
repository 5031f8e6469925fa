"""The benchmark's scaling rounds are merged by hand-checkable arithmetic (bench/load.py)."""

from __future__ import annotations

from typing import Any

from bench.load import merged_throughput


def _round(ok: int, wall: float, cpu_ms: float, p95: float, other: float) -> dict[str, Any]:
    return {
        "concurrency": 4,
        "requests": ok,
        "ok": ok,
        "statuses": {"200": ok},
        "errors": [],
        "wall_s": wall,
        "rps": ok / wall,
        "latency_under_load": {"p95_ms": p95},
        "client_cpu_s": 0.1,
        "client_cpu_share": 0.02,
        "machine_busy_cores": 1.5,
        "other_load_cores": other,
        "cpu_ms_per_request": {"server workers": cpu_ms, "client": None},
    }


def test_rounds_merge_into_requests_over_total_time_with_weighted_costs() -> None:
    merged = merged_throughput(
        [
            _round(ok=100, wall=2.0, cpu_ms=20.0, p95=90.0, other=0.0),
            _round(ok=60, wall=2.0, cpu_ms=30.0, p95=150.0, other=1.0),
            _round(ok=40, wall=1.0, cpu_ms=25.0, p95=120.0, other=0.5),
        ]
    )
    assert merged["requests"] == 200
    assert merged["rps"] == 200 / 5.0  # 40 requests/s, not the mean of 50, 30 and 40
    # CPU per request weighted by requests: (100*20 + 60*30 + 40*25) / 200 = 24
    assert merged["cpu_ms_per_request"]["server workers"] == 24.0
    assert merged["cpu_ms_per_request"]["client"] is None
    # other load weighted by wall time: (2*0 + 2*1 + 1*0.5) / 5 = 0.5
    assert merged["other_load_cores"] == 0.5
    assert merged["latency_under_load"]["p95_ms"] == 120.0  # the median round's
    assert merged["statuses"] == {"200": 200}
    assert merged["rounds"] == 3

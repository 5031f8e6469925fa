"""The load client: sequential latency and saturated throughput over keep-alive `http.client` connections.

Bodies are encoded once, before timing. Latency is measured at concurrency 1 from one connection
(`perf_counter` around request + full response). Throughput uses N forked client *processes* (not threads,
so the client is not limited by one GIL), each with its own keep-alive connection; they start together
after one warm-up request each and run until a shared request budget or a time limit is used up. Every
process reports its own CPU time, so the report can show how much of the machine the client itself took.
"""

from __future__ import annotations

import http.client
import multiprocessing
import multiprocessing.synchronize
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.servers import machine_busy_seconds

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class Target:
    """One keep-alive connection to `port` that reconnects when the server closed it between requests."""

    def __init__(self, port: int, path: str, timeout: float = 120.0) -> None:
        self.port = port
        self.path = path
        self.timeout = timeout
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.reconnects = 0
        self.last_used = time.monotonic()

    def refresh_if_idle(self, max_idle_s: float = 1.0) -> None:
        """Open a new connection (outside any timing) when the server may have closed this idle one."""
        if time.monotonic() - self.last_used > max_idle_s:
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.connection.connect()

    def post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.connection.request("POST", self.path, body=body, headers=HEADERS)
                response = self.connection.getresponse()
                payload = response.read()
                self.last_used = time.monotonic()
                return response.status, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # gunicorn closes idle keep-alive connections after 2 s; retry once on a fresh one
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.reconnects += 1
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `sorted_values` must be sorted."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarise_ms(samples_s: list[float]) -> dict[str, float]:
    values = sorted(s * 1000 for s in samples_s)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": percentile(values, 0.50),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "mean_ms": sum(values) / len(values),
        "min_ms": values[0],
        "max_ms": values[-1],
    }


@dataclass
class LatencyResult:
    samples_s: list[float]
    statuses: Counter[int]
    last_body: bytes
    stopped_early: bool  # the time cap ended the loop before `iterations`
    wall_s: float
    reconnects: int = 0
    summary: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Series:
    """One mode's part of an interleaved latency measurement."""

    port: int
    body: bytes
    iterations: int
    warmup: int


def measure_latency_interleaved(
    path: str, series: dict[str, Series], *, time_cap_s: float
) -> dict[str, LatencyResult]:
    """Latency at concurrency 1 for several servers at once, their requests interleaved.

    One request at a time in total: round r sends each mode's share of requests (spread evenly, so a mode
    with half the iterations sends every other round). Whatever else the machine is doing then hits every
    mode alike, which keeps the ratios between modes fair on a shared machine. Each mode has its own
    keep-alive connection, renewed outside the timing if it sat idle long enough for the server to close it.
    """
    targets = {name: Target(s.port, path) for name, s in series.items()}
    samples: dict[str, list[float]] = {name: [] for name in series}
    statuses: dict[str, Counter[int]] = {name: Counter() for name in series}
    last: dict[str, bytes] = dict.fromkeys(series, b"")
    stopped_early = False
    rounds = max(s.iterations for s in series.values())
    try:
        for name, s in series.items():
            for _ in range(s.warmup):
                _, last[name] = targets[name].post(s.body)
        started = time.perf_counter()
        for r in range(rounds):
            if time.perf_counter() - started > time_cap_s:
                stopped_early = True
                break
            for name, s in series.items():
                due = (r + 1) * s.iterations // rounds - r * s.iterations // rounds
                target = targets[name]
                for _ in range(due):
                    target.refresh_if_idle()
                    t0 = time.perf_counter()
                    status, last[name] = target.post(s.body)
                    samples[name].append(time.perf_counter() - t0)
                    statuses[name][status] += 1
        wall = time.perf_counter() - started
    finally:
        for target in targets.values():
            target.close()
    out = {}
    for name in series:
        result = LatencyResult(
            samples[name], statuses[name], last[name], stopped_early, wall, targets[name].reconnects
        )
        result.summary = summarise_ms(samples[name])
        out[name] = result
    return out


# ------------------------------------------------------------------------------------------ throughput


def _client_process(
    port: int,
    path: str,
    body: bytes,
    barrier: multiprocessing.synchronize.Barrier,
    budget: Any,  # multiprocessing.Value("i"): requests still allowed
    time_limit_s: float,
    results: Any,  # multiprocessing.Queue
) -> None:
    target = Target(port, path)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    error = None
    try:
        target.post(body)  # warm-up: connection open, worker thread busy once
    except OSError as exc:
        error = f"warm-up failed: {type(exc).__name__}"
    barrier.wait(timeout=600)
    start = time.monotonic()
    cpu_start = time.process_time()
    while error is None and time.monotonic() - start < time_limit_s:
        with budget.get_lock():
            if budget.value <= 0:
                break
            budget.value -= 1
        t0 = time.perf_counter()
        try:
            status, _ = target.post(body)
        except OSError as exc:
            error = type(exc).__name__
            break
        latencies.append(time.perf_counter() - t0)
        statuses[status] += 1
    end = time.monotonic()
    target.close()
    results.put(
        {
            "start": start,
            "end": end,
            "cpu_s": time.process_time() - cpu_start,
            "statuses": dict(statuses),
            "latencies": latencies,
            "error": error,
        }
    )


def measure_throughput(
    port: int,
    path: str,
    body: bytes,
    *,
    concurrency: int,
    max_requests: int,
    time_limit_s: float,
    cpu_counters: Any = None,  # callable -> {"service workers": cpu_s, "sekmet": cpu_s, ...} so far
) -> dict[str, Any]:
    """Requests per second with `concurrency` clients, all of them sending `body` back to back."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(concurrency + 1)
    budget = ctx.Value("i", max_requests)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=_client_process,
            args=(port, path, body, barrier, budget, time_limit_s, results),
            daemon=True,
        )
        for _ in range(concurrency)
    ]
    for process in processes:
        process.start()
    reports = []
    try:
        barrier.wait(timeout=600)  # every client has done its warm-up request
        cpu_before = cpu_counters() if cpu_counters else None
        busy_before = machine_busy_seconds()
        for _ in processes:
            reports.append(results.get(timeout=time_limit_s + 300))
        busy_after = machine_busy_seconds()
        cpu_after = cpu_counters() if cpu_counters else None
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
    start = min(r["start"] for r in reports)
    end = max(r["end"] for r in reports)
    wall = end - start
    statuses: Counter[int] = Counter()
    for report in reports:
        statuses.update({int(k): v for k, v in report["statuses"].items()})
    ok = statuses.get(200, 0)
    total = sum(statuses.values())
    client_cpu = sum(r["cpu_s"] for r in reports)
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": total,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": [r["error"] for r in reports if r["error"]],
        "wall_s": wall,
        "rps": ok / wall if wall > 0 else 0.0,
        "latency_under_load": summarise_ms([x for r in reports for x in r["latencies"]]),
        "client_cpu_s": client_cpu,
        "client_cpu_share": client_cpu / (wall * (multiprocessing.cpu_count() or 1)) if wall > 0 else 0.0,
    }
    busy = busy_after - busy_before
    out["machine_busy_cores"] = busy / wall if wall > 0 else None
    if cpu_before is not None and cpu_after is not None:
        ours = sum(cpu_after[name] - cpu_before[name] for name in cpu_before) + client_cpu
        out["other_load_cores"] = max(0.0, busy - ours) / wall if wall > 0 else None
        out["cpu_ms_per_request"] = {
            name: (cpu_after[name] - cpu_before[name]) * 1000 / total if total else None
            for name in cpu_before
        }
        out["cpu_ms_per_request"]["client"] = client_cpu * 1000 / total if total else None
    return out


def merged_throughput(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several `measure_throughput` results of one server as one: requests over the summed wall time;
    CPU per request weighted by requests, shares and other load by wall time; the median round's p95."""
    wall = sum(r["wall_s"] for r in runs)
    total = sum(r["requests"] for r in runs)
    ok = sum(r["ok"] for r in runs)
    statuses: Counter[str] = Counter()
    for r in runs:
        statuses.update(r["statuses"])

    def by_wall(key: str) -> float | None:
        values = [(r[key], r["wall_s"]) for r in runs if r.get(key) is not None]
        weight = sum(w for _, w in values)
        return sum(v * w for v, w in values) / weight if weight else None

    cpu: dict[str, float | None] = {}
    for name in runs[0].get("cpu_ms_per_request", {}):
        values = [(r["cpu_ms_per_request"][name], r["requests"]) for r in runs]
        values = [(value, n) for value, n in values if value is not None]
        weight = sum(n for _, n in values)
        cpu[name] = sum(v * n for v, n in values) / weight if weight else None
    p95s = sorted(r["latency_under_load"].get("p95_ms") or 0.0 for r in runs)
    return {
        "concurrency": runs[0]["concurrency"],
        "requests": total,
        "ok": ok,
        "statuses": dict(sorted(statuses.items())),
        "errors": [e for r in runs for e in r["errors"]],
        "wall_s": wall,
        "rps": ok / wall if wall > 0 else 0.0,
        "latency_under_load": {"p95_ms": p95s[len(p95s) // 2]},
        "client_cpu_s": sum(r["client_cpu_s"] for r in runs),
        "client_cpu_share": by_wall("client_cpu_share"),
        "machine_busy_cores": by_wall("machine_busy_cores"),
        "other_load_cores": by_wall("other_load_cores"),
        "cpu_ms_per_request": cpu,
        "rounds": len(runs),
    }

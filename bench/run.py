"""Benchmark the service against the parse-only floor, across record sizes, with and without prefetch.

    .venv/bin/python -m bench.run             # full run (about 4 minutes on 2 cores), writes bench/results/
    .venv/bin/python -m bench.run --quick     # smoke run: 2 sizes, few iterations (under a minute)
    .venv/bin/python -m bench.run --seed 7 --sizes 50,200,1000,5000 --concurrency 4

What one run does (details in bench/README.md):

1. generates one order-select request per size (deterministic by --seed, see bench/generate.py): a ketamine
   draft order selected, full prefetch, records shaped like the Synthea test patients;
2. measures three servers, one after the other, each under gunicorn with the production worker settings
   (gthread, 4 threads, --workers; the default is the service's default of 2):
   floor   bench/floor_app.py: read the body, json.loads it, answer {"cards": []} (and the same with
           orjson and with msgspec: floor-orjson, floor-msgspec);
   prefetch  `ketamine-cds serve --dev` with the full-prefetch request;
   fhir    `ketamine-cds serve --dev` with no prefetch and fhirServer pointing at a local sekmet-fhir server
           loaded with the same patients (the service pages with its own page size);
   for each size: latency at concurrency 1 (p50/p95/p99), throughput with --concurrency client processes,
   peak RSS (VmHWM) of every gunicorn worker;
3. measures the prefetch service's throughput at 1000 resources with 2 workers and with 1 (scaling);
4. profiles the 1000-resource prefetch request in process (cProfile) to show where the time goes;
5. writes bench/results/results.json, REPORT.md and latency.png.

All servers listen on free 127.0.0.1 ports and are stopped when the run ends, also on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import requests

from bench import servers
from bench.generate import PatientRecord, background_pool, make_patient
from bench.load import Series, measure_latency_interleaved, measure_throughput, merged_throughput
from bench.profiling import profile_in_subprocess
from bench.report import analyse, write_outputs
from tests.support.fhir_server import running_fhir_server

SERVICE_PATH = "/cds-services/ketamine-order-select"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (50, 200, 1000, 5000)
QUICK_SIZES = (50, 1000)
PROFILE_SIZE = 1000
# mode name -> BENCH_FLOOR_PARSER (bench/floor_app.py); "floor" is the standard library, the targets' floor
FLOOR_PARSERS = {"floor": "json", "floor-orjson": "orjson", "floor-msgspec": "msgspec"}
FETCHING = ("fhir-floor", "fhir")  # modes that read the chart from sekmet


def _iterations(size: int, mode: str, quick: bool) -> int:
    if quick:
        return 10 if mode in FETCHING else 20
    if mode in FETCHING:
        return 200 if size <= 200 else 100 if size <= 1000 else 20
    return 300 if size <= 200 else 200 if size <= 1000 else 50


def _warmup(size: int, quick: bool) -> int:
    return 2 if quick or size > 1000 else 5


# ------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=servers.REPO_ROOT, capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    except OSError:
        return ""


def source_state() -> dict[str, Any]:
    changed = [
        line for line in _git("status", "--porcelain", "--", "cds", "rules", "hooks").splitlines() if line
    ]
    return {"commit": _git("rev-parse", "HEAD"), "uncommitted_service_files": len(changed)}


def wait_for_quiet(max_wait_s: float, threshold_cores: float) -> dict[str, Any]:
    """Sample the machine's CPU use (3 s windows) until it is under `threshold_cores` or time runs out.

    The benchmark is idle meanwhile, so what is measured is the rest of the machine's work.
    """
    started = time.monotonic()
    samples = 0
    while True:
        samples += 1
        before = servers.machine_busy_seconds()
        time.sleep(3.0)
        load = (servers.machine_busy_seconds() - before) / 3.0
        waited = time.monotonic() - started
        if load < threshold_cores or waited >= max_wait_s:
            return {
                "waited_s": round(waited, 1),
                "other_load_cores": load,
                "threshold_cores": threshold_cores,
            }
        if samples % 10 == 1:
            _log(f"machine busy ({load:.2f} cores used by other work); waiting for it to calm down")


def reference_speed(body: bytes, repeats: int = 20) -> float:
    """Median ms of json.loads(body) in this process: a fixed CPU task to compare the machine's speed
    across runs and within one (the host's speed varies even when nothing else runs in this VM)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        json.loads(body)
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def fhir_resources_users() -> list[str]:
    """Service modules that import fhir.resources (model validation), by source scan."""
    root = servers.REPO_ROOT / "cds"
    return sorted(
        str(path.relative_to(servers.REPO_ROOT))
        for path in root.rglob("*.py")
        if "fhir.resources" in path.read_text(encoding="utf-8")
    )


def _versions() -> dict[str, str]:
    names = ("flask", "gunicorn", "werkzeug", "jsonschema", "requests", "orjson", "msgspec")
    return {name: version(name) for name in names}


# ------------------------------------------------------------------------------------------ measuring


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _cards(body: bytes) -> list[str]:
    try:
        return [f"{c.get('indicator')}: {c.get('summary')}" for c in json.loads(body).get("cards", [])]
    except (ValueError, AttributeError):
        return ["(response is not a card list)"]


@dataclass
class Mode:
    name: str
    server: servers.Server
    bodies: dict[int, bytes]
    cpu_counters: Callable[[], dict[str, float]]  # CPU seconds so far of the processes serving this mode


def measure_size(modes: list[Mode], size: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """All modes at one size: interleaved latency at concurrency 1, then each mode's throughput."""
    series = {
        m.name: Series(
            m.server.port, m.bodies[size], _iterations(size, m.name, args.quick), _warmup(size, args.quick)
        )
        for m in modes
    }
    _log(
        f"{size} resources: latency at concurrency 1, interleaved ("
        + ", ".join(f"{name} {s.iterations}" for name, s in series.items())
        + " requests)"
    )

    def ours() -> float:
        return sum(sum(m.cpu_counters().values()) for m in modes) + time.process_time()

    t0, busy0, ours0 = time.monotonic(), servers.machine_busy_seconds(), ours()
    latencies = measure_latency_interleaved(SERVICE_PATH, series, time_cap_s=args.latency_cap)
    t1, busy1, ours1 = time.monotonic(), servers.machine_busy_seconds(), ours()
    other_cores = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0) if t1 > t0 else None
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        latency = latencies[mode.name]
        _log(
            f"  {mode.name}: p50 {latency.summary.get('p50_ms', float('nan')):.1f} ms, "
            f"p95 {latency.summary.get('p95_ms', float('nan')):.1f} ms, statuses {dict(latency.statuses)}"
        )
        out[mode.name] = {
            "body_bytes": len(mode.bodies[size]),
            "latency": {
                **latency.summary,
                "statuses": {str(k): v for k, v in sorted(latency.statuses.items())},
                "stopped_by_time_cap": latency.stopped_early,
                "reconnects": latency.reconnects,
                "other_load_cores": other_cores,
            },
            "cards": _cards(latency.last_body),
            "worker_memory_after_latency": mode.server.worker_memory(),
        }
    _log(f"  other work on the machine meanwhile: {other_cores or 0:.2f} cores")
    for mode in modes:
        _log(
            f"{mode.name}: {size} resources, throughput ({args.concurrency} clients, "
            f"{args.throughput_seconds} s)"
        )
        throughput = measure_throughput(
            mode.server.port,
            SERVICE_PATH,
            mode.bodies[size],
            concurrency=args.concurrency,
            max_requests=args.throughput_requests,
            time_limit_s=args.throughput_seconds,
            cpu_counters=mode.cpu_counters,
        )
        _log(
            f"  {throughput['rps']:.1f} requests/s, statuses {throughput['statuses']}, "
            f"other load {throughput.get('other_load_cores') or 0:.2f} cores"
        )
        out[mode.name]["throughput"] = throughput
        out[mode.name]["worker_memory_after"] = mode.server.worker_memory()
    return out


def _memory_summary(server: servers.Server) -> dict[str, Any]:
    workers = server.worker_memory()
    return {
        "workers": workers,
        "master": {"pid": server.process.pid, **servers.memory_kb(server.process.pid)},
        "peak_worker_hwm_kb": max((w.get("VmHWM", 0) for w in workers), default=0),
    }


@contextmanager
def _service(name: str, args: argparse.Namespace, workdir: Path) -> Iterator[servers.Server]:
    env = {
        "KETAMINE_CDS_DATABASE_URL": f"sqlite:///{workdir / (name + '.sqlite3')}",
        "KETAMINE_CDS_AUDIT_HASH_KEY": "bench-not-a-secret",
    }
    with servers.running_gunicorn(
        name, servers.service_command(args.workers), workers=args.workers, workdir=workdir, env=env
    ) as server:
        yield server


def _load_patients(base_url: str, token: str, patients: list[PatientRecord]) -> dict[str, Any]:
    """PUT every record into sekmet, then check that each patient's searches see all its resources."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
    }
    loaded: dict[str, Any] = {}
    with requests.Session() as session:
        session.trust_env = False
        for record in patients:
            started = time.monotonic()
            for bundle in record.transaction_bundles():
                response = session.post(base_url, data=json.dumps(bundle), headers=headers, timeout=300)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"loading {record.size}: HTTP {response.status_code}: {response.text[:1000]}"
                    )
                bad = [
                    e.get("response", {}).get("status", "")
                    for e in response.json().get("entry", [])
                    if not e.get("response", {}).get("status", "").startswith("20")
                ]
                if bad:
                    raise RuntimeError(f"loading {record.size}: {len(bad)} entries refused, e.g. {bad[:3]}")
            loaded[str(record.size)] = {"load_s": time.monotonic() - started}
        for record in patients:  # after every load, so one record overwriting another would show
            totals = {}
            for rtype, expected in record.counts().items():
                if rtype == "Patient":
                    continue
                response = session.get(
                    f"{base_url}/{rtype}",
                    params={"patient": record.patient_id, "_count": "1"},
                    headers=headers,
                    timeout=60,
                )
                total = response.json().get("total")
                totals[rtype] = total
                if total != expected:
                    raise RuntimeError(
                        f"sekmet holds {total} {rtype} for size {record.size}, expected {expected}"
                    )
            loaded[str(record.size)]["search_totals"] = totals
    return loaded


def _profile(bodies: dict[int, bytes], size: int, requests: int, gc_requests: int) -> dict[str, Any]:
    """cProfile of one size's prefetch request in a fresh interpreter, or {"error": why} if it failed."""
    _log(f"profiling the {size}-resource prefetch request in process ({requests} requests)")
    try:
        return {
            "size": size,
            **profile_in_subprocess(bodies[size], SERVICE_PATH, requests=requests, gc_requests=gc_requests),
        }
    except Exception as exc:
        _log(f"profiling failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def _worker_cpu(server: servers.Server) -> Callable[[], dict[str, float]]:
    return lambda: {"server workers": server.worker_cpu()}


SCALING_ROUNDS = 4


def measure_scaling(service: Mode, size: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Throughput of the full-prefetch service with 2 workers (the running one) and with 1 (a second
    instance), in alternating rounds, so that other work on a shared machine falls on both alike."""
    rounds: dict[str, list[dict[str, Any]]] = {"2": [], "1": []}
    with ExitStack() as stack:
        single = argparse.Namespace(**{**vars(args), "workers": 1})
        servers_by_workers = {
            "2": service.server,
            "1": stack.enter_context(_service("service-1w", single, workdir)),
        }
        for index in range(SCALING_ROUNDS):
            for workers, server in servers_by_workers.items():
                _log(f"scaling: {size} resources, {workers} worker(s), round {index + 1} of {SCALING_ROUNDS}")
                rounds[workers].append(
                    measure_throughput(
                        server.port,
                        SERVICE_PATH,
                        service.bodies[size],
                        concurrency=args.concurrency,
                        max_requests=args.throughput_requests,
                        time_limit_s=args.throughput_seconds / SCALING_ROUNDS,
                        cpu_counters=_worker_cpu(server),
                    )
                )
    runs = {workers: merged_throughput(measured) for workers, measured in rounds.items()}
    for workers, run in runs.items():
        _log(f"  {workers} worker(s): {run['rps']:.1f} requests/s over {SCALING_ROUNDS} rounds")
    return {
        "size": size,
        "concurrency": args.concurrency,
        "seconds": args.throughput_seconds,
        "rounds": SCALING_ROUNDS,
        "workers": runs,
    }


def start_servers(
    stack: ExitStack,
    patients: list[PatientRecord],
    prefetch_bodies: dict[int, bytes],
    args: argparse.Namespace,
    workdir: Path,
    results: dict[str, Any],
) -> list[Mode]:
    """Start the floor, the service (twice: prefetch and FHIR fallback) and sekmet; `stack` stops them."""
    modes = []
    for name, parser in FLOOR_PARSERS.items():
        _log(f"{name}: gunicorn + bench/floor_app.py ({parser})")
        floor = stack.enter_context(
            servers.running_gunicorn(
                name,
                servers.floor_command(args.workers),
                workers=args.workers,
                workdir=workdir,
                env={"BENCH_FLOOR_PARSER": parser},
            )
        )
        modes.append(Mode(name, floor, prefetch_bodies, _worker_cpu(floor)))
    _log("prefetch: ketamine-cds serve --dev")
    service = stack.enter_context(_service("service-prefetch", args, workdir))
    modes.append(Mode("prefetch", service, prefetch_bodies, _worker_cpu(service)))
    results["modes"] = {mode.name: {"sizes": {}} for mode in modes}
    if args.no_fhir:
        return modes

    _log("fhir: starting sekmet-fhir (own venv under .cache/sekmet-venv, built on first use)")
    fhir = stack.enter_context(running_fhir_server(load_patients=False))
    sekmet = servers.sekmet_pids()
    _log(f"fhir: loading {len(patients)} patients into sekmet")
    loaded = _load_patients(fhir.base_url, fhir.token, patients)
    fhir_bodies = {
        p.size: json.dumps(p.fhir_request(fhir.base_url, fhir.token), separators=(",", ":")).encode()
        for p in patients
    }
    _log("fhir-floor: gunicorn + bench/floor_app.py (fetch the chart, parse, no screening)")
    fetch_floor = stack.enter_context(
        servers.running_gunicorn(
            "fhir-floor",
            servers.floor_command(args.workers),
            workers=args.workers,
            workdir=workdir,
            env={"BENCH_FLOOR_PARSER": "json", "BENCH_FLOOR_FETCH": "1"},
        )
    )
    floor_cpu = _worker_cpu(fetch_floor)

    def floor_counters() -> dict[str, float]:
        return {**floor_cpu(), "sekmet": sum(servers.cpu_seconds(pid) for pid in sekmet)}

    modes.append(Mode("fhir-floor", fetch_floor, fhir_bodies, floor_counters))
    _log("fhir: a second ketamine-cds serve --dev for the FHIR fallback")
    fallback = stack.enter_context(_service("service-fhir", args, workdir))

    def counters() -> dict[str, float]:
        return {
            "server workers": fallback.worker_cpu(),
            "sekmet": sum(servers.cpu_seconds(pid) for pid in sekmet),
        }

    modes.append(Mode("fhir", fallback, fhir_bodies, counters))
    results["modes"]["fhir-floor"] = {"sizes": {}}
    results["modes"]["fhir"] = {
        "sizes": {},
        "sekmet": {
            "requirement": "sekmet-fhir==0.1.1",
            "timings": fhir.timings,
            "loaded": loaded,
            "pids": sekmet,
        },
    }
    return modes


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 50 and 1000, few iterations")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request generator")
    parser.add_argument(
        "--sizes", help=f"comma-separated record sizes (default {','.join(map(str, DEFAULT_SIZES))})"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers (the service's default is 2)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="client processes in the throughput measurement"
    )
    parser.add_argument("--throughput-seconds", type=float, help="time limit of each throughput measurement")
    parser.add_argument(
        "--throughput-requests",
        type=int,
        default=20_000,
        help="request budget of each throughput measurement",
    )
    parser.add_argument(
        "--latency-cap", type=float, help="time cap (s) of the interleaved concurrency-1 series of one size"
    )
    parser.add_argument("--profile-requests", type=int, help="requests profiled in process")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before starting, wait up to this many seconds for other work on the machine to drop below "
        "--idle-threshold (the run itself still reports the other load during every measurement)",
    )
    parser.add_argument("--idle-threshold", type=float, default=0.3, help="cores of other work deemed idle")
    parser.add_argument("--no-fhir", action="store_true", help="skip the FHIR-fallback measurements")
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip the 2-workers-against-1 throughput measurement"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="where results.json, REPORT.md, latency.png go"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sizes:
        sizes = tuple(sorted({int(s) for s in args.sizes.split(",") if s.strip()}))
    else:
        sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.throughput_seconds is None:
        args.throughput_seconds = 2.0 if args.quick else 8.0
    if args.latency_cap is None:
        args.latency_cap = 20.0 if args.quick else 120.0
    if args.profile_requests is None:
        args.profile_requests = 3 if args.quick else 20
    command = "python -m bench.run" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    quiet = wait_for_quiet(args.wait_idle, args.idle_threshold)
    _log(f"other work on the machine before the start: {quiet['other_load_cores']:.2f} cores")
    started = time.monotonic()
    started_at = datetime.now(UTC)

    _log(f"generating patients of {', '.join(map(str, sizes))} resources (seed {args.seed})")
    patients = [make_patient(size, args.seed) for size in sizes]
    prefetch_bodies = {
        p.size: json.dumps(p.prefetch_request(), separators=(",", ":")).encode() for p in patients
    }
    pool = background_pool()
    results: dict[str, Any] = {
        "meta": {
            "date": started_at.isoformat(timespec="seconds"),
            "command": command,
            "machine": machine(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "before_start": quiet,
            "source": source_state(),
            "fhir_resources_users": fhir_resources_users(),
            "service_gc_tuning": sorted(
                str(path.relative_to(servers.REPO_ROOT))
                for path in (servers.REPO_ROOT / "cds").rglob("*.py")
                if "gc.freeze(" in path.read_text(encoding="utf-8")
            ),
            "versions": _versions(),
            "seed": args.seed,
            "sizes": list(sizes),
            "quick": args.quick,
            "workers": args.workers,
            "threads_per_worker": 4,
            "worker_class": "gthread",
            "concurrency": args.concurrency,
            "throughput_seconds": args.throughput_seconds,
            "throughput_requests": args.throughput_requests,
            "latency_cap_s": args.latency_cap,
            "client": "http.client keep-alive; throughput from forked client processes",
        },
        "patients": {
            str(p.size): {
                "counts": p.counts(),
                "prefetch_body_bytes": len(prefetch_bodies[p.size]),
            }
            for p in patients
        },
        "generator": {
            "pool_sizes": {k: len(v) for k, v in pool.by_type.items()},
            "type_shares": pool.weights,
            "excluded_relevant_templates": pool.excluded,
        },
    }
    with tempfile.TemporaryDirectory(prefix="ketamine-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        modes = start_servers(stack, patients, prefetch_bodies, args, workdir, results)
        # Sizes outermost, and the modes' latency requests interleaved: the three modes of one size are
        # measured under the same background load, so their ratios stay fair on a shared machine.
        reference_size = PROFILE_SIZE if PROFILE_SIZE in sizes else sizes[-1]
        reference = prefetch_bodies[reference_size]
        results["meta"]["reference_ms"] = {"start": reference_speed(reference)}
        for size in sizes:
            results["meta"]["reference_ms"][str(size)] = reference_speed(reference)
            for name, cell in measure_size(modes, size, args).items():
                results["modes"][name]["sizes"][str(size)] = cell
        for mode in modes:
            results["modes"][mode.name]["memory"] = _memory_summary(mode.server)
        if not args.no_scaling:
            prefetch = next(mode for mode in modes if mode.name == "prefetch")
            results["scaling"] = measure_scaling(prefetch, reference_size, args, workdir)
        sekmet = results["modes"].get("fhir", {}).get("sekmet", {}).get("pids", [])
        if sekmet:
            results["modes"]["fhir"]["memory"]["sekmet"] = [
                {"pid": pid, **servers.memory_kb(pid)} for pid in sekmet
            ]
        results["meta"]["reference_ms"]["end"] = reference_speed(reference)
        stack.close()  # stop every server before profiling in process
        profile_size = PROFILE_SIZE if PROFILE_SIZE in sizes else sizes[-1]
        profile = _profile(prefetch_bodies, profile_size, args.profile_requests, 20 if args.quick else 80)
        if "error" in profile:  # keep the measurements; say why the profile is missing
            results["profile_error"] = profile["error"]
        else:
            results["profile"] = profile
        if sizes[0] != profile_size:  # the fixed cost per call, which dominates small requests
            small = _profile(prefetch_bodies, sizes[0], args.profile_requests * 10, 20)
            if "error" not in small:
                results["profile_small"] = small
    results["meta"]["duration_s"] = time.monotonic() - started
    results["meta"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["analysis"] = analyse(results)
    args.out.mkdir(parents=True, exist_ok=True)
    write_outputs(results, args.out)
    _log(f"done in {results['meta']['duration_s']:.0f} s: {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
